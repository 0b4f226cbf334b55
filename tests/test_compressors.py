"""Compressor semantics on the torch path: the definitions (against independent numpy
code), wire accounting, statistics from theory, and bad input."""

import math

import numpy as np
import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.kernels import philox_torch

ELEMENTWISE = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:3:100",
               "qsgd:255:64", "qsgd:1:1", "qsgd:1:64:inf", "qsgd:3:inf"]


def _x(d, seed=0):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * 2


# -- definitions, against numpy ------------------------------------------------------------
def _np_reference(spec, x, seed):
    """C(x) from the definitions in float64 numpy (randomness from the same Philox draws)."""
    x = x.double().numpy()
    d = x.size
    if spec == "identity":
        return x
    if spec == "fp16":
        return np.clip(x, -65504, 65504).astype(np.float16).astype(np.float64)
    if spec == "sign":
        return np.abs(x).mean() * np.where(x < 0, -1.0, 1.0)
    u = philox_torch.uniforms(seed, 0, d).double().numpy()
    if spec == "ssign":
        n = np.linalg.norm(x)
        return np.where(u < 0.5 + x / (2 * n), n, -n)
    _, levels, bucket, *p = spec.split(":")
    s, b = int(levels), int(bucket)
    out = np.empty(d)
    for lo in range(0, d, b):
        xb = x[lo:lo + b]
        n = np.abs(xb).max() if p == ["inf"] else np.linalg.norm(xb)
        a = np.abs(xb) / n * s if n > 0 else np.zeros_like(xb)
        level = np.minimum(np.floor(a) + (u[lo:lo + b] < a - np.floor(a)), s)
        out[lo:lo + b] = np.sign(xb) * level * n / s
    return out


@pytest.mark.parametrize("spec", ["identity", "fp16", "sign", "ssign", "qsgd:7:512",
                                  "qsgd:3:100", "qsgd:255:64", "qsgd:1:64:inf", "qsgd:5:100:inf"])
@pytest.mark.parametrize("d", [1, 9, 1000, 4097])
def test_decode_encode_matches_definition(spec, d):
    c = from_spec(spec, backend="torch")
    x = _x(d, seed=d)
    y = c.decode(c.encode(x, seed=7), d, seed=7).double().numpy()
    ref = _np_reference(spec, x, 7)
    # fp32 evaluation of the same formula: a few roundings of relative size 2**-24 each
    scale = np.abs(ref).max() + np.abs(x.numpy()).max()
    assert np.allclose(y, ref, rtol=0, atol=8 * 2.0**-24 * scale)


def test_sign_zero_encodes_plus():
    c = from_spec("sign", backend="torch")
    x = torch.tensor([0.0, -0.0, 2.0, -4.0])
    assert c.decode(c.encode(x), 4).tolist() == [1.5, 1.5, 1.5, -1.5]


@pytest.mark.parametrize("spec", ["qsgd:7", "ssign", "sign", "qsgd:1:3", "qsgd:1:3:inf"])
def test_zero_input_decodes_to_zeros(spec):
    c = from_spec(spec, backend="torch")
    y = c.decode(c.encode(torch.zeros(1000)), 1000)
    assert torch.isfinite(y).all() and not y.any()


def test_zero_bucket_among_nonzero():
    c = from_spec("qsgd:7:4", backend="torch")
    x = torch.tensor([1.0, 2, 3, 4, 0, 0, 0, 0, -1, 0.5, 0, 0])
    y = c.decode(c.encode(x, seed=1), 12, seed=1)
    assert torch.isfinite(y).all() and not y[4:8].any()


# -- wire accounting -------------------------------------------------------------------------
def _expected_bits(spec, d):
    name, *args = spec.split(":")
    if name == "identity":
        return 32 * d
    if name in ("fp16", "bf16"):
        return 16 * d
    if name in ("sign", "ssign"):
        return d + 32
    s = int(args[0])
    b = int(args[1]) if len(args) > 1 and args[1] != "inf" else 512
    return math.ceil(d / b) * 32 + d * (1 + math.ceil(math.log2(s + 1)))


@pytest.mark.parametrize("spec", ELEMENTWISE + ["qsgd:15", "qsgd:4:7", "qsgd:65535"])
def test_wire_bits_and_payload_length(spec):
    c = from_spec(spec, backend="torch")
    for d in [1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 511, 512, 513, 1000, 4097, 10007]:
        bits = c.wire_bits(d)
        assert bits == _expected_bits(spec, d)
        nbytes = c.payload_bytes(d)
        assert nbytes % 8 == 0 and 0 <= nbytes - math.ceil(bits / 8) < 8
    for d in [1, 9, 1000]:
        assert c.encode(_x(d)).numel() == c.payload_bytes(d)


def test_payload_size_independent_of_values():
    c = from_spec("qsgd:7", backend="torch")
    sizes = {c.encode(x).numel() for x in (_x(300), torch.zeros(300), _x(300) * 1e6)}
    assert sizes == {c.payload_bytes(300)}


# -- statistics from theory ------------------------------------------------------------------
def test_sign_error_identity():
    """||C(x) - x||^2 = ||x||^2 - ||x||_1^2 / d exactly (up to fp32 rounding)."""
    c = from_spec("sign", backend="torch")
    for d in [1, 10, 1000]:
        x = _x(d, seed=d).double()
        err = (c.decode(c.encode(x.float()), d).double() - x).pow(2).sum()
        want = x.pow(2).sum() - x.abs().sum() ** 2 / d
        assert abs(float(err - want)) <= 1e-5 * float(x.pow(2).sum())
        assert float(err) <= (1 - c.alpha(d)) * float(x.pow(2).sum()) * (1 + 1e-6)


@pytest.mark.parametrize("spec", ["ssign", "qsgd:1", "qsgd:7:64", "qsgd:3:100", "qsgd:1:64:inf",
                                  "qsgd:3:100:inf"])
def test_unbiased_and_variance_bound(spec):
    """Over R seeds: the mean of C(x) is within 5 standard errors of x coordinatewise
    (union bound over d = 200 coordinates: false alarm < 1e-4), and the empirical
    E||C(x) - x||^2 stays below omega ||x||^2 within 5 standard errors of that mean
    (the bound is attained with equality by ssign)."""
    c = from_spec(spec, backend="torch")
    d, reps = 200, 4000
    x = _x(d, seed=3)
    ys = torch.stack([c.decode(c.encode(x, seed=s), d, seed=s) for s in range(reps)]).double()
    mean, std = ys.mean(0), ys.std(0)
    se = std / math.sqrt(reps)
    assert ((mean - x.double()).abs() <= 5 * se + 1e-9).all()
    err = (ys - x.double()).pow(2).sum(1)
    slack = 5 * float(err.std()) / math.sqrt(reps)
    assert float(err.mean()) <= c.omega(d) * float(x.double().pow(2).sum()) + slack


def test_stochastic_deterministic_in_seed():
    c = from_spec("qsgd:3", backend="torch")
    x = _x(1000)
    assert torch.equal(c.encode(x, seed=5), c.encode(x, seed=5))
    assert not torch.equal(c.encode(x, seed=5), c.encode(x, seed=6))


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,match", [
    ("nope", "unknown compressor"), ("", "non-empty"), ("qsgd", "qsgd:S"),
    ("qsgd:0", "S"), ("qsgd:x", "integer"), ("qsgd:7:0", "B"), ("qsgd:7:8:9", "qsgd:S"),
    ("sign:3", "no arguments"), ("identity:1", "no arguments"), ("qsgd:-1", "S"),
    ("qsgd:inf", "integer"), ("qsgd:7:8:inf:inf", "qsgd:S"), ("qsgd:7:8:2", "qsgd:S"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        from_spec(spec)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        from_spec("sign", backend="cuda")


@pytest.mark.parametrize("spec", ["identity", "sign", "qsgd:7"])
def test_bad_payloads_and_inputs(spec):
    c = from_spec(spec, backend="torch")
    x = _x(100)
    p = c.encode(x)
    with pytest.raises(ValueError, match="bytes"):
        c.decode(p[:-8], 100)
    with pytest.raises(ValueError, match="bytes"):
        c.decode(torch.cat([p, p[:8]]), 100)
    with pytest.raises(ValueError, match="uint8"):
        c.decode(p.view(torch.int32), 100)
    with pytest.raises(ValueError, match="numel"):
        c.decode(p, 0)
    with pytest.raises(ValueError, match="empty"):
        c.encode(torch.zeros(0))
    with pytest.raises(ValueError, match="dtype"):
        c.encode(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        c.encode(torch.zeros(5, dtype=torch.int32))
    with pytest.raises(ValueError, match="seed"):
        c.encode(x, seed=-1)
    out = torch.full((100,), 7.0)
    with pytest.raises(ValueError, match="out"):
        c.decode(p, 100, out=torch.zeros(99))
    with pytest.raises(ValueError, match="seeds"):
        c.decode_sum(torch.stack([p, p]), 100, seeds=[1])
    with pytest.raises(ValueError, match="add"):
        c.decode(p, 100, add=True)
    assert torch.equal(out, torch.full((100,), 7.0))


@pytest.mark.parametrize("spec", ["identity", "fp16", "sign", "qsgd:7"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_input_raises_and_leaves_state(spec, bad):
    from gradpack.kernels.fusion import Fusion

    c = from_spec(spec, backend="torch")
    x = _x(50)
    x[17] = bad
    fusion = Fusion(momentum=1, eta=0.5, residual="sub", update="add")
    state = {"v": _x(50, 1), "h": _x(50, 2)}
    before = {k: v.clone() for k, v in state.items()}
    out = torch.full((c.payload_bytes(50),), 0xAB, dtype=torch.uint8)
    with pytest.raises(ValueError, match="non-finite"):
        c.step(fusion, x, state, out=out)
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert (out == 0xAB).all()


def test_missing_state_raises():
    from gradpack.kernels.fusion import Fusion

    c = from_spec("sign", backend="torch")
    with pytest.raises(ValueError, match="state tensor 'h'"):
        c.step(Fusion(residual="sub", update="add"), _x(10), {})
    with pytest.raises(ValueError, match="float32"):
        c.step(Fusion(residual="sub"), _x(10), {"h": torch.zeros(10, dtype=torch.float64)})


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        from_spec("sign", backend="triton").encode(_x(10))


def test_dlpack_arrays_are_accepted():
    """CuPy (on GPU) and NumPy arrays come in through DLPack without a copy."""
    c = from_spec("qsgd:7", backend="torch")
    x = _x(300)
    assert torch.equal(c.encode(x.numpy(), seed=2), c.encode(x, seed=2))
    with pytest.raises(ValueError, match="DLPack"):
        c.encode([1.0, 2.0])
