"""One rank of ``gradpack train``: the compressed run, then the uncompressed baseline
(``dcgd`` + ``identity`` through the same hook: plain minibatch SGD, fp32 on the wire) on the
same seed, model initialisation and minibatches. Model-per-worker algorithms (``local-sgd``,
``scaffold``, ``dsgd``, ``gradient-tracking``, ``choco-sgd``) train without DDP: each rank
steps its own model and a :class:`~gradpack.averaging.ModelAverager` mixes the models after
every ``optimizer.step()``; the loss reported is each rank's own model's (averaged over ranks),
the evaluation is of rank 0's model."""

from __future__ import annotations

import datetime
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack.ddp
from gradpack.algorithms import PeerAlgorithm, from_spec
from gradpack.averaging import ModelAverager
from gradpack.comm.distributed import exit_worker

from . import data as train_data
from . import models as train_models

BASELINE = ("dcgd", "identity", {})


@dataclass
class TrainConfig:
    model: str = "cnn"
    algorithm: str = "ef21"
    compressor: str = "topk:0.05"
    hparams: dict = field(default_factory=dict)
    workers: int = 2
    steps: int = 400
    batch_size: int = 32
    lr: float = 0.2
    momentum: float = 0.0
    seed: int = 0
    backend: str = "auto"
    bucket_cap_mb: float = 25.0
    eval_every: int = 50
    context: int = 64
    text_bytes: int = 2_000_000
    baseline: bool = True
    timeout_s: float = 300.0

    def runs(self) -> list[tuple[str, str, str, dict]]:
        out = [("compressed", self.algorithm, self.compressor, dict(self.hparams))]
        if self.baseline:
            out.append(("baseline", *BASELINE))
        return out

    def as_dict(self) -> dict:
        return asdict(self)


Sink = Callable[[str, int, float], None]  # (run label, step done, loss)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_backend(backend: str, world: int) -> str:
    if backend != "auto":
        return backend
    if torch.cuda.is_available() and torch.cuda.device_count() >= world:
        return "nccl"
    return "gloo"


DIGITS_MODELS = ("cnn", "mlp")


class Task:
    """Data, model factory, loss and evaluation for one ``--model``."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        if cfg.model in DIGITS_MODELS:
            self.train, self.test = train_data.digits(cfg.seed)
        elif cfg.model == "lm":
            self.train_text, self.val_text = train_data.text_splits(cfg.text_bytes)
            g = torch.Generator().manual_seed(cfg.seed)
            n_val = 32
            starts = torch.randint(0, self.val_text.numel() - cfg.context - 1, (n_val,),
                                   generator=g)
            win = torch.stack([self.val_text[s:s + cfg.context + 1] for s in starts.tolist()])
            self.val = (win[:, :-1], win[:, 1:])
        else:
            raise ValueError(f"unknown model {cfg.model!r}; known: cnn, mlp, lm")

    def model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)
        kw = {"context": self.cfg.context} if self.cfg.model == "lm" else {}
        return train_models.build(self.cfg.model, **kw).to(self.device)

    def batch(self, batches: train_data.Batches):
        cfg = self.cfg
        if cfg.model in DIGITS_MODELS:
            x, y = batches.classification(self.train, self.rank, self.world, cfg.batch_size)
        else:
            x, y = batches.text(self.train_text, self.rank, self.world, cfg.batch_size,
                                cfg.context)
        return x.to(self.device), y.to(self.device)

    @staticmethod
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        if self.cfg.model in DIGITS_MODELS:
            x, y = self.test.x.to(self.device), self.test.y.to(self.device)
            out = model(x)
            metrics = {"test_loss": self.loss(out, y).item(),
                       "test_accuracy": (out.argmax(1) == y).float().mean().item()}
        else:
            x, y = (t.to(self.device) for t in self.val)
            val = self.loss(model(x), y).item()
            metrics = {"val_loss": val, "val_bits_per_byte": val / float(np.log(2))}
        model.train()
        return metrics


def train_run(task: Task, label: str, spec, sink: Sink | None) -> dict:
    cfg, rank, device = task.cfg, task.rank, task.device
    name, comp, hparams = spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = isinstance(from_spec(name, comp, **hparams), PeerAlgorithm)
    if peer:
        return _peer_run(task, label, spec, sink)
    model = task.model()
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              bucket_cap_mb=cfg.bucket_cap_mb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        algorithm = from_spec(name, comp, seed=cfg.seed, **hparams)
    state = gradpack.ddp.register(ddp, algorithm)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum)

    def step(x, y) -> float:
        loss = task.loss(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    losses, evals, t0 = run_steps(task, ddp.module, step, sink, label)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    steps, hist = state.ledger.history()
    state.ledger.check()
    return {
        "label": label, "algorithm": name, "compressor": comp, "hparams": hparams,
        "warnings": sorted({str(w.message) for w in caught}),
        "params": sum(p.numel() for p in model.parameters()),
        "losses": losses, "evals": evals,
        "bits_up_cum": np.cumsum(hist["bits_up"][:, rank]).tolist(),
        "bits_up": int(state.ledger.totals()["bits_up"][rank]),
        "bits_down": int(state.stats.downlink_bits),
        "bytes_handed": int(state.ledger.totals()["handed_up"][rank]),
        "bytes_received": int(state.ledger.totals()["received"][rank]),
        "units": len(state.units.units),
        "wall_s": wall, "encode_s": state.stats.encode_s, "decode_s": state.stats.decode_s,
        "comm_s": state.stats.comm_s,
    }


def run_steps(task: Task, model: torch.nn.Module, step: Callable[..., float],
              sink: Sink | None = None, label: str = "") -> tuple[list, list, float]:
    """The loop every training run shares: ``cfg.steps`` minibatches through
    ``step(x, y) -> loss``, and on rank 0 an evaluation of ``model`` every ``eval_every``
    steps, its time left out of the training clock. Returns ``(losses, evals, t0)``."""
    cfg, rank = task.cfg, task.rank
    batches = train_data.Batches(cfg.seed, rank)
    losses, evals = [], []
    eval_s = 0.0
    t0 = time.perf_counter()
    for k in range(cfg.steps):
        losses.append(step(*task.batch(batches)))
        if rank == 0 and ((k + 1) % cfg.eval_every == 0 or k + 1 == cfg.steps):
            t_eval = time.perf_counter()
            evals.append({"step": k + 1, "time_s": t_eval - t0 - eval_s,
                          **task.evaluate(model)})
            eval_s += time.perf_counter() - t_eval
        if sink is not None:
            sink(label, k + 1, losses[-1])
    return losses, evals, t0


def _peer_run(task: Task, label: str, spec, sink: Sink | None) -> dict:
    """A model per rank, mixed by the averager after each optimizer step (no DDP)."""
    cfg, rank = task.cfg, task.rank
    name, comp, hparams = spec
    model = task.model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        averager = ModelAverager(model, name, comp, seed=cfg.seed, **hparams)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    bits_cum: list[int] = []
    comm_s = 0.0

    def step(x, y) -> float:
        nonlocal comm_s
        loss = task.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t_comm = time.perf_counter()
        averager.pre_step()  # SCAFFOLD's correction, gradient tracking's first exchange
        comm_s += time.perf_counter() - t_comm
        opt.step()
        t_comm = time.perf_counter()
        averager.step()
        comm_s += time.perf_counter() - t_comm
        bits_cum.append(int(averager.ledger.totals()["bits_up"][rank]))
        return loss.item()

    losses, evals, t0 = run_steps(task, model, step, sink, label)
    wall = time.perf_counter() - t0
    averager.ledger.check()
    totals = averager.ledger.totals()
    return {
        "label": label, "algorithm": name, "compressor": comp, "hparams": hparams,
        "warnings": sorted({str(w.message) for w in caught}),
        "params": sum(p.numel() for p in model.parameters()),
        "losses": losses, "evals": evals, "bits_up_cum": bits_cum,
        "bits_up": int(totals["bits_up"][rank]), "bits_down": 0,
        "messages_up": int(totals["messages_up"][rank]),
        "bytes_handed": int(totals["handed_up"][rank]),
        "bytes_received": int(totals["received"][rank]), "units": 1,
        # the averager's encode, exchange and decode together are its comm_s
        "wall_s": wall, "encode_s": 0.0, "decode_s": 0.0, "comm_s": comm_s,
    }


def train_rank(cfg: TrainConfig, rank: int, world: int, local_rank: int,
               sink: Sink | None) -> dict | None:
    """Both runs on this rank (process group already initialised); rank 0 returns the
    merged results (losses averaged over ranks), the others ``None``."""
    device = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else \
        torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    task = Task(cfg, rank, world, device)
    mine = {label: train_run(task, label, spec, sink if rank == 0 else None)
            for label, *spec in [(r[0], *r[1:]) for r in cfg.runs()]}
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    merged = {}
    for label, res in mine.items():
        per_rank = np.array([g[label]["losses"] for g in gathered])
        merged[label] = {**res, "losses": per_rank.mean(0).tolist(),
                         "encode_s": float(np.mean([g[label]["encode_s"] for g in gathered])),
                         "decode_s": float(np.mean([g[label]["decode_s"] for g in gathered])),
                         "comm_s": float(np.mean([g[label]["comm_s"] for g in gathered]))}
    return merged


def spawn_entry(rank: int, cfg: TrainConfig, port: int, queue) -> None:
    """``torch.multiprocessing`` entry: env:// init on 127.0.0.1, progress and results to
    the parent through ``queue``."""
    world = cfg.workers
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(resolve_backend(cfg.backend, world), init_method="env://",
                            timeout=datetime.timedelta(seconds=cfg.timeout_s))
    try:
        result = train_rank(cfg, rank, world, rank,
                            lambda label, k, loss: queue.put(("step", label, k, loss)))
        if rank == 0:
            queue.put(("done", result))
        dist.barrier()  # nobody tears down gloo while a peer is still talking to it
    finally:
        dist.destroy_process_group()
    exit_worker(queue)  # only on success: a raised error reaches the parent as usual
