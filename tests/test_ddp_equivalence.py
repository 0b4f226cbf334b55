"""One definition of each algorithm, two transports: the DDP hook on 2 gloo processes and
``gradpack.simulate`` in one process give bit-identical parameters after several steps.

The model is one flat parameter ``x`` (one bucket, one compression unit, stream 0, so the
seeds match the simulator's); worker ``i``'s loss is ``0.5 * ||A_i x - b_i||^2`` on its own
data, its gradient computed by the same autograd code on both sides. DORE is included: the
direction the hook hands to SGD (lr = DORE's gamma) moves the model by ``beta * q_hat``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack.ddp
from gradpack.algorithms import from_spec
from gradpack.sim.core import simulate
from tests.ddp_support import run_workers, values

pytestmark = pytest.mark.distributed

DIM, STEPS, LR = 40, 6, 0.005
CASES = [
    ("dcgd", "qsgd:4", {}),
    ("ef14", "topk:0.2", {}),
    ("ef21", "randk:0.25", {}),
    ("ef21-sgdm", "sign", {"eta": 0.3}),
    ("ef21-sgd2m", "topk:0.2", {"eta": 0.3}),
    ("dore", "qsgd:4", {"gamma": LR}),
]


class LeastSquares(nn.Module):
    def __init__(self, x0: torch.Tensor, rank: int):
        super().__init__()
        self.x = nn.Parameter(x0.clone())
        g = torch.Generator().manual_seed(100 + rank)
        # plain attributes, not buffers: DDP would broadcast rank 0's data
        self.a = torch.randn(16, DIM, generator=g)
        self.b = torch.randn(16, generator=g)

    def forward(self):
        return 0.5 * ((self.a @ self.x - self.b) ** 2).sum()


def x0() -> torch.Tensor:
    return torch.linspace(-1, 1, DIM)


def grad_fn(rank: int):
    model = LeastSquares(x0(), rank)

    def fn(x: torch.Tensor, step: int) -> torch.Tensor:
        with torch.no_grad():
            model.x.copy_(x)
        model.x.grad = None
        model().backward()
        return model.x.grad.clone()

    return fn


def algorithm(name, comp, hp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_spec(name, comp, seed=11, **hp)


def _ddp_vs_simulator(rank, n):
    out = {}
    for name, comp, hp in CASES:
        ddp = DDP(LeastSquares(x0(), rank))
        gradpack.ddp.register(ddp, algorithm(name, comp, hp))
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        for _ in range(STEPS):
            opt.zero_grad()
            ddp().backward()
            opt.step()
        out[name] = {"ddp": ddp.module.x.detach().clone()}
        if rank == 0:
            hist = simulate(algorithm(name, comp, hp), [grad_fn(i) for i in range(n)], x0(),
                            steps=STEPS, lr=LR, seed=11)
            out[name]["sim"] = hist.x.clone()
    return out


def test_ddp_hook_and_simulator_give_the_same_parameters(tmp_path):
    results = values(run_workers(_ddp_vs_simulator, 2, tmp_path))
    for name, *_ in CASES:
        ddp0, ddp1, sim = results[0][name]["ddp"], results[1][name]["ddp"], \
            results[0][name]["sim"]
        assert not torch.equal(ddp0, x0()), name
        assert torch.equal(ddp0, ddp1), name
        assert torch.equal(ddp0, sim), (name, (ddp0 - sim).abs().max())
