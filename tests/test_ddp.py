"""gradpack.ddp on gloo: every algorithm trains through the comm hook with many buckets.

Each test spawns its processes once and checks several things inside them (spawning costs
seconds on a 2-core machine): loss goes down, the ranks hold bit-identical parameters, the
ledger's payload bytes equal the bytes handed to every all-gather, and the hook compresses
from step 0 across DDP's bucket rebuild.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack.comm.distributed as comm_distributed
import gradpack.ddp
from gradpack.algorithms import from_spec
from tests.ddp_support import run_workers, values

pytestmark = pytest.mark.distributed

# (algorithm, compressor, hparams, lr): every algorithm, compressors from its theory's class
SPECS = [
    ("dcgd", "qsgd:4", {}, 0.1),
    ("ef14", "sign", {}, 0.1),
    ("ef21", "sign", {}, 0.1),
    ("ef21-sgdm", "sign", {"eta": 0.5}, 0.1),
    ("ef21-sgd2m", "sign", {"eta": 0.5}, 0.1),
    ("dore", "qsgd:16", {}, 0.05),
]


def mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).to(dtype)


def batch(rank: int, step: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(32, 8, generator=g)
    y = x[:, :4].sum(1, keepdim=True) - x[:, 4:].sum(1, keepdim=True)
    return x.to(dtype), y.to(dtype)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def train(ddp: DDP, opt, rank: int, steps: int, start: int = 0, dtype=torch.float32):
    losses = []
    for k in range(start, start + steps):
        x, y = batch(rank, k, dtype)
        loss = ((ddp(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def count_handed(monkeypatch_list: list):
    """Wrap comm's all-gather shim (the hook sends through it) to count the bytes this rank
    hands it."""
    real = comm_distributed.all_gather_into_tensor

    def counting(out, inp, group=None, async_op=False):
        monkeypatch_list.append(inp.numel() * inp.element_size())
        return real(out, inp, group, async_op)

    comm_distributed.all_gather_into_tensor = counting
    return real


def _every_algorithm(rank, n, steps):
    handed: list[int] = []
    real = count_handed(handed)
    out = {}
    try:
        for name, comp, hp, lr in SPECS:
            handed.clear()
            ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20, gradient_as_bucket_view=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alg = from_spec(name, comp, seed=7, **hp)
            state = gradpack.ddp.register(ddp, alg)
            handed.clear()  # the config check's digest went through the shim too
            opt = torch.optim.SGD(ddp.parameters(), lr=lr)
            losses = train(ddp, opt, rank, steps)
            state.ledger.check()
            totals = state.ledger.totals()
            out[name] = {
                "losses": losses, "params": flat_params(ddp.module),
                "handed": sum(handed), "ledger_handed": int(totals["handed_up"][rank]),
                "ledger_bytes": int(totals["bytes_up"][rank]),
                "collectives": state.stats.collectives, "units": len(state.units.units),
                "step": state.step,
            }
    finally:
        comm_distributed.all_gather_into_tensor = real
    return out


def test_every_algorithm_trains_on_gloo_with_many_buckets(tmp_path):
    steps = 30
    results = values(run_workers(_every_algorithm, 3, tmp_path, steps, timeout_s=60))
    for name, *_ in SPECS:
        per_rank = [r[name] for r in results]
        first = per_rank[0]
        # ranks agree bit for bit: same bytes in, same aggregate out
        for other in per_rank[1:]:
            assert torch.equal(first["params"], other["params"]), name
        for r, res in enumerate(per_rank):
            early, late = sum(res["losses"][:5]), sum(res["losses"][-5:])
            assert late < 0.5 * early, (name, r, [round(v, 3) for v in res["losses"]])
            assert res["handed"] == res["ledger_handed"] == res["ledger_bytes"], name
        assert first["step"] == steps
        # several units (DDP's rebuilt buckets), compressed from step 0 (no warm-up): one
        # all-gather in the first step (its one bucket), one per bucket after the rebuild
        assert first["units"] >= 3, name
        assert first["collectives"] == 1 + (steps - 1) * first["units"], name
