"""``gradpack train``: compressed data-parallel training on local worker processes.

Runs the chosen algorithm/compressor through the DDP comm hook (:mod:`gradpack.ddp`) on
``--workers`` local processes (gloo on CPU; NCCL when there is a GPU per worker), then the
uncompressed baseline on the same seed, and prints a table, saves plots of loss against
steps and against bits, and a JSON of the run. Under ``torchrun`` (``RANK``/``WORLD_SIZE``
set) every process is one worker and rank 0 reports; this works across nodes too::

    torchrun --nproc-per-node 2 -m gradpack train --model cnn

Models: ``cnn`` (a small CNN on scikit-learn's bundled digits) and ``lm`` (a byte-level
transformer on the Python standard library's own sources). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import queue as queue_module
import re
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gradpack.algorithms import PeerAlgorithm, from_spec, hparam_names
from gradpack.cli_types import (
    checked_build,
    flag_error,
    key_value,
    nonnegative_float,
    one_line,
    positive_float,
    positive_int,
    seed,
)
from gradpack.compressors import from_spec as compressor_from_spec

from . import data as train_data
from . import report as train_report
from .worker import TrainConfig, free_port, resolve_backend, spawn_entry, train_rank

MODEL_DEFAULTS = {  # per model: steps, batch size, lr, eval every
    "cnn": {"steps": 400, "batch_size": 32, "lr": 0.2, "eval_every": 50},
    "mlp": {"steps": 300, "batch_size": 32, "lr": 0.1, "eval_every": 25},
    "lm": {"steps": 300, "batch_size": 16, "lr": 0.3, "eval_every": 50},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=sorted(MODEL_DEFAULTS), default="cnn",
                   help="cnn: digits CNN (default); mlp: wide digits MLP (4.3M parameters, "
                   "communication-bound); lm: byte-level transformer on stdlib text")
    p.add_argument("--algorithm", default="ef21",
                   help="dcgd, ef14, ef21 (default), ef21-sgdm, ef21-sgd2m, dore; model "
                   "averaging after each optimizer step: local-sgd, scaffold, dsgd, "
                   "gradient-tracking, choco-sgd")
    p.add_argument("--graph", default=None,
                   help="dsgd / gradient-tracking / choco-sgd graph: ring (default), exp, "
                   "one-peer-exp, complete")
    p.add_argument("--local-steps", type=positive_int, default=None,
                   help="local-sgd / scaffold / dsgd: optimizer steps between communication "
                   "rounds")
    p.add_argument("--compressor", default="topk:0.05",
                   help="compressor spec, e.g. topk:0.05 (default), randk:0.1, qsgd:15, sign")
    p.add_argument("--hparam", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="algorithm hyperparameter (repeatable), e.g. --hparam eta=0.1")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="local worker processes (default 2)")
    p.add_argument("--steps", type=positive_int, help="training steps (default: 400 cnn, 300 lm)")
    p.add_argument("--batch-size", type=positive_int,
                   help="per-worker batch (default: 32 cnn, 16 lm)")
    p.add_argument("--lr", type=positive_float,
                   help="SGD learning rate (default: 0.2 cnn, 0.3 lm)")
    p.add_argument("--momentum", type=nonnegative_float, default=0.0,
                   help="SGD momentum (default 0)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto",
                   help="auto: nccl with a GPU per worker, else gloo")
    p.add_argument("--bucket-cap-mb", type=positive_float, default=25.0,
                   help="DDP bucket size")
    p.add_argument("--eval-every", type=positive_int, help="evaluate every N steps (default 50)")
    p.add_argument("--no-baseline", action="store_true", help="skip the uncompressed baseline")
    p.add_argument("--out", help="output folder (default runs/train-<model>-<alg>-<compressor>)")
    p.add_argument("--timeout", type=positive_float, default=300.0,
                   help="process-group timeout in seconds (a dead worker fails the others)")


def parse_hparams(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict, each value an int, a float or a string
    (:func:`gradpack.cli_types.key_value`)."""
    return dict(key_value(item) for item in items)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration, checked by :func:`check_config`: a bad flag raises
    ``argparse.ArgumentError`` here, in the parent, before any worker starts."""
    d = MODEL_DEFAULTS[args.model]
    pick = lambda v, k: d[k] if v is None else v  # noqa: E731
    hparams = dict(args.hparam)
    sources = dict.fromkeys(hparams, "--hparam")  # which flag set each hyperparameter
    for flag, key, value in (("--graph", "graph", args.graph),
                             ("--local-steps", "local_steps", args.local_steps)):
        if value is not None:
            hparams[key], sources[key] = value, flag
    cfg = TrainConfig(
        model=args.model, algorithm=args.algorithm, compressor=args.compressor,
        hparams=hparams, workers=args.workers,
        steps=pick(args.steps, "steps"), batch_size=pick(args.batch_size, "batch_size"),
        lr=pick(args.lr, "lr"), momentum=args.momentum, seed=args.seed, backend=args.backend,
        bucket_cap_mb=args.bucket_cap_mb, eval_every=pick(args.eval_every, "eval_every"),
        baseline=not args.no_baseline, timeout_s=args.timeout,
    )
    if _under_torchrun():
        cfg.workers = int(os.environ["WORLD_SIZE"])
    check_config(cfg, sources)
    out = _out_dir(args, cfg)
    if os.path.exists(out) and not os.path.isdir(out):
        raise flag_error("--out", f"{out!r} exists and is not a folder")
    return cfg


def check_config(cfg: TrainConfig, sources: dict[str, str]) -> None:
    """Build what every worker builds from ``cfg`` (the compressor, the algorithm with its
    seed, a peer algorithm's graph, the minibatch generator, the process-group timeout) and
    raise ``argparse.ArgumentError`` naming the flag behind the first that fails.
    ``sources`` maps each hyperparameter to its flag (``--hparam``, ``--graph``, ...)."""
    try:
        compressor = compressor_from_spec(cfg.compressor)
    except ValueError as e:
        raise flag_error("--compressor", one_line(e)) from None
    try:
        accepted = hparam_names(cfg.algorithm)
    except ValueError as e:
        raise flag_error("--algorithm", one_line(e)) from None
    if "seed" in cfg.hparams:
        raise flag_error(sources.get("seed", "--hparam"), "the algorithm's seed is --seed")
    unknown = sorted(set(cfg.hparams) - set(accepted))
    if unknown:
        takes = ", ".join(k for k in accepted if k != "seed") or "none (its seed is --seed)"
        raise flag_error(sources.get(unknown[0], "--hparam"),
                         f"{cfg.algorithm} does not take {unknown[0]}; it takes {takes}")

    def build(**hparams):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return from_spec(cfg.algorithm, compressor, **hparams)

    sources = {**sources, "seed": "--seed"}
    algorithm = checked_build(build, {"seed": cfg.seed, **cfg.hparams}, sources,
                              "--algorithm/--compressor")
    if isinstance(algorithm, PeerAlgorithm):
        try:
            algorithm.graph_for(cfg.workers)
        except ValueError as e:
            raise flag_error(sources.get("graph", "--workers"), one_line(e)) from None
    try:
        train_data.Batches(cfg.seed, cfg.workers - 1)
    except (ValueError, RuntimeError, OverflowError) as e:
        raise flag_error("--seed", f"{cfg.seed} is too large for the minibatch generator "
                         f"({one_line(e)})") from None
    try:
        datetime.timedelta(seconds=cfg.timeout_s)
    except OverflowError:
        raise flag_error("--timeout", f"{cfg.timeout_s:g} s is too long for a timeout") from None
    _check_backend(cfg)


def _check_backend(cfg: TrainConfig) -> None:
    """NCCL needs a CUDA device per local worker (each takes ``cuda:LOCAL_RANK``)."""
    backend = resolve_backend(cfg.backend, cfg.workers)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.workers)) if _under_torchrun() \
        else cfg.workers
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "nccl" and (not dist.is_nccl_available() or gpus < local):
        raise flag_error("--backend", f"nccl needs a CUDA GPU per worker: {local} workers "
                         f"on this node, {gpus} GPUs")
    if backend == "gloo" and not dist.is_gloo_available():
        raise flag_error("--backend", "this torch build has no gloo")


def _out_dir(args, cfg: TrainConfig) -> str:
    if args.out:
        return args.out
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", f"{cfg.model}-{cfg.algorithm}-{cfg.compressor}")
    return os.path.join("runs", f"train-{tag}")


def _under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


class _Display:
    """Rich progress bars, one per run."""

    def __init__(self, cfg: TrainConfig, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(TextColumn("{task.description:<40}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                                 TimeElapsedColumn(), console=console)
        self.tasks = {label: self.progress.add_task(f"{label}: {alg} / {comp}",
                                                    total=cfg.steps, loss="-", start=False)
                      for label, alg, comp, _ in cfg.runs()}

    def __call__(self, label: str, step: int, loss: float) -> None:
        if step == 1:  # the clock starts with training, not with the workers' start-up
            self.progress.start_task(self.tasks[label])
        self.progress.update(self.tasks[label], completed=step, loss=f"{loss:.4f}")


def _spawn(cfg: TrainConfig, display: _Display) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = mp.start_processes(spawn_entry, args=(cfg, free_port(), q), nprocs=cfg.workers,
                               join=False, start_method="spawn")
    result = None
    with display.progress:
        while True:
            try:
                msg = q.get(timeout=0.2)
            except queue_module.Empty:
                if procs.join(timeout=0):  # all exited (raises if one failed)
                    break
                continue
            if msg[0] == "step":
                display(*msg[1:])
            elif msg[0] == "done":
                result = msg[1]
    while not procs.join(timeout=1):
        pass
    if result is None:
        raise RuntimeError("gradpack train: the workers exited without results")
    return result


def _torchrun(cfg: TrainConfig, display: _Display | None) -> dict | None:
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    cfg.workers = world
    dist.init_process_group(resolve_backend(cfg.backend, world),
                            timeout=datetime.timedelta(seconds=cfg.timeout_s))
    try:
        if display is None:
            result = train_rank(cfg, rank, world, int(os.environ["LOCAL_RANK"]), None)
        else:
            with display.progress:
                result = train_rank(cfg, rank, world, int(os.environ["LOCAL_RANK"]), display)
        dist.barrier()  # nobody tears down gloo while a peer is still talking to it
        return result
    finally:
        dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    cfg = config_from_args(args)  # bad flags fail here, before any worker starts
    console = Console()
    torchrun = _under_torchrun()
    leader = not torchrun or int(os.environ["RANK"]) == 0
    title = (f"gradpack train: {cfg.model}, {cfg.algorithm} / {cfg.compressor}, "
             f"{cfg.workers} workers ({resolve_backend(cfg.backend, cfg.workers)}), "
             f"{cfg.steps} steps, seed {cfg.seed}")
    if leader:
        console.print(title)
    display = _Display(cfg, console) if leader else None
    try:
        results = _torchrun(cfg, display) if torchrun else _spawn(cfg, display)
    except mp.ProcessRaisedException as e:  # a worker's own traceback says what and where
        console.print(f"[red]gradpack train: a worker failed[/red]\n{e}")
        return 1
    if not leader:
        return 0
    out_dir = _out_dir(args, cfg)
    os.makedirs(out_dir, exist_ok=True)
    for run_ in results.values():
        for w in run_["warnings"]:
            console.print(f"[yellow]warning ({run_['label']}):[/yellow] {w}")
    rows = train_report.summary_rows(results)
    console.print(train_report.table(rows, title))
    paths = train_report.plots(results, out_dir, title)
    paths.append(train_report.save_json(cfg.as_dict(), results, rows, out_dir))
    console.print("saved: " + ", ".join(paths))
    return 0

