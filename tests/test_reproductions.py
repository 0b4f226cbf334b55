"""The seeds' claims, reproduced with the library's own algorithms, compressors and simulator.

Each test states its setup; margins are set well inside what the runs show, so a change of
backend or rounding does not flip them, while a broken algorithm does.
"""

import warnings

import numpy as np
import pytest
import torch

from gradpack.algorithms import CompressorWarning, from_spec
from gradpack.problems import quadratic, top1
from gradpack.simulator import simulate


def _alg(name, spec, **hp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressorWarning)
        return from_spec(name, spec, backend="torch", **hp)


# -- seed 004: the Top-1 example ---------------------------------------------------------------
@pytest.mark.parametrize("lr", [0.01, 0.05])
def test_dcgd_top1_diverges_at_the_derived_rate(lr):
    """At x = t(1,1,1): grad f_1 = 2t<a_1,1>a_1 + t/2 = t(-11/2, 9/2, 9/2), and symmetrically
    for f_2, f_3, so Top-1 keeps only the -11t/2 of worker i's own coordinate i. The mean is
    -(11/6) t (1,1,1), hence x^{k+1} = (1 + 11 lr / 6) x^k: x^k = (1 + 11 lr/6)^k x^0, a
    geometric divergence for every lr > 0 (and f grows by (1 + 11 lr/6)^2 per step)."""
    p = top1()
    steps = 40
    h = simulate(_alg("dcgd", "topk:1"), p.grad_fns, p.x0, steps=steps, lr=lr,
                 loss_fn=p.loss_fn)
    rate = 1 + 11 * lr / 6
    np.testing.assert_allclose(h.x.numpy(), rate**steps * np.ones(3), rtol=1e-5)
    ratios = h.loss[1:] / h.loss[:-1]
    np.testing.assert_allclose(ratios, rate**2, rtol=1e-5)


@pytest.mark.parametrize("name, hp", [("ef14", {"gamma": 0.03}), ("ef21", {})])
def test_error_feedback_fixes_top1(name, hp):
    """EF14 (seed 003's form, gamma = lr) and EF21 converge to x* = 0 with the same Top-1 and
    lr = 0.03 (< 1/L = 0.058), starting from x0 = (1,1,1); float32 messages floor at ~1e-7."""
    p = top1()
    h = simulate(_alg(name, "topk:1", **hp), p.grad_fns, p.x0, steps=400, lr=0.03,
                 loss_fn=p.loss_fn)
    assert h.diverged_at is None
    assert float(h.x.norm()) < 1e-5
    assert h.loss[-1] < 1e-9 * h.loss[0]


# -- seed 003: EF21-SGD stalls, EF21-SGDM gets close to SGD ------------------------------------
def test_ef21_sgdm_beats_ef21_sgd_with_noise():
    """Setup: heterogeneous least squares, n = 4, d = 20, mu = 0.5, Gaussian gradient noise
    sigma = 0.3 per coordinate (batch-size-1-like, E||g - grad||^2 = 1.8), Top-1 (alpha =
    1/20), x0 = 3 * 1 (||grad f(x0)||^2 = 58), the same lr = 0.1 for all, eta = 0.1, 400 steps.
    Measured (mean ||grad f||^2 over the last 150 steps): SGD 0.016, EF21-SGDM 0.021,
    EF21-SGD 0.14. Asserted: EF21-SGD's floor >= 4x EF21-SGDM's; EF21-SGDM within 2x of
    uncompressed SGD."""
    p = quadratic(n=4, d=20, mu=0.5, sigma=0.3, seed=0)
    x0 = p.x0 + 3.0
    floors = {}
    for key, alg in [("sgd", _alg("dcgd", "identity")), ("ef21", _alg("ef21", "topk:1")),
                     ("sgdm", _alg("ef21-sgdm", "topk:1", eta=0.1))]:
        h = simulate(alg, p.grad_fns, x0, steps=400, lr=0.1, grad_fn=p.grad_fn)
        floors[key] = float(np.mean(h.grad_norm_sq[-150:]))
    assert floors["ef21"] >= 4 * floors["sgdm"], floors
    assert floors["sgdm"] <= 2 * floors["sgd"], floors


# -- seed 002: DORE ------------------------------------------------------------------------------
def test_dore_converges_linearly_with_far_fewer_bits():
    """Setup: strongly convex least squares, n = 10, d = 100, mu = 0.02, full gradients,
    x0 = 1, lr = 1/L for all, server topology (downlinks counted: 32 bits/element for the
    uncompressed baseline, DORE's compressed q_hat). DORE: qsgd:7:64 both ways (4.5 bits per
    element), alpha = 0.3, beta = 1, eta = 0.3, gamma = lr.

    Claims checked: DORE converges linearly (loss down 1e-10 in 100 steps, to the float32
    floor), where DCGD with the same unbiased quantizer stalls at a neighbourhood (seed 002,
    "issue of simple gradient compression"); and DORE reaches loss <= 1e-6 f(x0) with >= 80%
    fewer bits than uncompressed GD (measured 85.5%: the same 32 steps at 9/64 of the bits).
    Seed 002's ">95%" is not reachable here: the cheapest unbiased quantizer on offer (qsgd:1)
    spends 2 bits per element, 6.25% of fp32 even at equal step counts."""
    p = quadratic(n=10, d=100, mu=0.02, sigma=0.0, seed=0)
    x0 = p.x0 + 1.0
    lr, steps = 1.0 / p.L, 100
    kw = dict(steps=steps, lr=lr, loss_fn=p.loss_fn, topology="server")
    gd = simulate(_alg("dcgd", "identity"), p.grad_fns, x0, **kw)
    dcgd = simulate(_alg("dcgd", "qsgd:7:64"), p.grad_fns, x0, **kw)
    dore = simulate(_alg("dore", "qsgd:7:64", alpha=0.3, beta=1.0, eta=0.3, gamma=lr),
                    p.grad_fns, x0, **kw)
    f0 = dore.loss[0]
    assert dore.loss[-1] < 1e-10 * f0
    # linear: a geometric decrease over every 20-step window until the float32 floor
    window = dore.loss[0:81:20]
    assert (window[1:] < 0.05 * window[:-1]).all(), window
    assert dcgd.loss[-1] > 1e3 * dore.loss[-1]  # plain compression stalls
    target = 1e-6 * f0
    bits = {}
    for key, h in [("gd", gd), ("dore", dore)]:
        k = int(np.flatnonzero(h.loss <= target)[0])
        bits[key] = h.bits_per_worker("total")[k]
    assert bits["dore"] <= 0.2 * bits["gd"], bits


def test_dore_downlink_is_a_real_compressed_message():
    """In the server topology DORE's broadcast is the packed q_hat: its bytes are the
    compressor's payload, not the 4 bytes per element of a dense model."""
    p = quadratic(n=3, d=64, mu=0.1, seed=1)
    alg = _alg("dore", "qsgd:3:64")
    h = simulate(alg, p.grad_fns, p.x0.to(torch.float32), steps=3, lr=0.5 / p.L,
                 topology="server")
    per_step = np.diff(h.bytes_down, axis=0)
    assert (per_step == alg.compressor.payload_bytes(64)).all()
    assert alg.compressor.payload_bytes(64) < 4 * 64 / 4
