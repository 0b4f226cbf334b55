"""Simulator precision: algorithm state in ``x0``'s dtype, only the wire payload in float32
(issue 13, item 7)."""

import warnings

import pytest
import torch

from gradpack.algorithms import CompressorWarning, from_spec
from gradpack.algorithms.unfused import unfused_step
from gradpack.compressors import from_spec as compressor
from gradpack.kernels.fusion import Fusion
from gradpack.sim.core import simulate
from gradpack.sim.problems import quadratic

F32_EPS = torch.finfo(torch.float32).eps  # 1.2e-7
F64_EPS = torch.finfo(torch.float64).eps  # 2.2e-16


def _alg(name, spec, **hp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressorWarning)
        return from_spec(name, spec, backend="torch", **hp)


def test_float64_dore_reaches_float64_accuracy():
    """Strongly convex least squares (n = 4, d = 50, mu = 0.1), full gradients, lr = 1/L,
    DORE with qsgd:4:50 in the server topology. Measured: float64 state reaches a relative
    error ||x - x*|| / ||x*|| of 5e-14 by step 200 and 7e-16 by 300; float32 state (an fp32 x0)
    floors at 2.5e-7, about 2 fp32 epsilons. Asserted: float64 below 1e4 float64 epsilons
    (2e-12) at step 250; float32 floors above one fp32 epsilon / 2."""
    p = quadratic(n=4, d=50, mu=0.1, sigma=0.0, seed=0)
    x0 = p.x0 + 1.0

    def rel(x):
        return float((x.double() - p.x_star).norm() / p.x_star.norm())

    kw = dict(steps=250, lr=1 / p.L, loss_fn=rel, topology="server")
    h64 = simulate(_alg("dore", "qsgd:4:50"), p.grad_fns, x0, **kw)
    h32 = simulate(_alg("dore", "qsgd:4:50"), p.grad_fns, x0.float(), **kw)
    assert h64.x.dtype == torch.float64 and h32.x.dtype == torch.float32
    assert h64.loss[-1] < 1e4 * F64_EPS, h64.loss[-1]
    assert h32.loss[-1] > F32_EPS / 2, h32.loss[-1]  # the fp32 state's floor
    assert h64.diverged_at is None and h32.diverged_at is None


@pytest.mark.parametrize("name, spec, hp", [
    ("ef21", "topk:0.25", {}), ("ef21-sgd2m", "sign", {"eta": 0.5}), ("ef14", "topk:0.25", {}),
    ("dore", "qsgd:3:16", {}), ("dcgd", "randk:0.5", {}),
])
def test_float64_state_and_float32_wire(name, spec, hp):
    """State tensors take x0's dtype; the first message of a float64 run from zero state is
    the float32 run's payload byte for byte (r = fp32(grad) either way); the messages are
    the compressor's own payload sizes."""
    alg = _alg(name, spec, **hp)
    g = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s64 = alg.init_state(32, world_size=2, rank=1, dtype=torch.float64)
    s32 = alg.init_state(32, world_size=2, rank=1)
    for key in alg.worker_state + alg.server_state:
        assert s64[key].dtype == torch.float64 and s32[key].dtype == torch.float32
    p64 = alg.worker_step(s64, g, step=1, rank=1)
    p32 = alg.worker_step(s32, g.float(), step=1, rank=1)
    assert torch.equal(p64, p32)
    gathered = torch.stack([p64, p64])
    d64 = alg.aggregate(s64, gathered, step=1)
    d32 = alg.aggregate(s32, gathered, step=1)
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32
    # the same decoded messages, accumulated in float64 vs float32: one fp32 rounding apart
    torch.testing.assert_close(d64.float(), d32, rtol=4 * F32_EPS, atol=4 * F32_EPS)


def test_unfused_step_keeps_the_error_in_float64():
    """EF14's memory h = r - C(r) with r in float64: r == h_new + decode(payload) exactly
    in float64 (the invariant orig == compressed + error), which the fp32 state can only
    hold to fp32 rounding."""
    c = compressor("topk:0.25", backend="torch")
    f = Fusion(residual="error", gamma=1.0, update="error")
    x = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1e-3
    h = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    r = h + x
    payload = unfused_step(c, f, x, {"h": h}, seed=0)
    assert torch.equal(h + c.decode(payload, 64).double(), r)
    with pytest.raises(ValueError, match="non-finite"):
        unfused_step(c, f, torch.full((64,), 1e300, dtype=torch.float64), {"h": h}, seed=0)
    assert torch.equal(h + c.decode(payload, 64).double(), r)  # nothing changed


def test_bad_state_dtype():
    alg = _alg("ef21", "topk:0.25")
    with pytest.raises(ValueError, match="dtype"):
        alg.init_state(8, world_size=1, dtype=torch.float16)
    s = alg.init_state(8, world_size=1, dtype=torch.float64)
    s["g"] = s["g"].float()
    with pytest.raises(ValueError, match="mixed dtypes"):
        alg.check_state(s)
