"""Every backend's kernels (Triton, native CPU) equal the torch twin bit for bit: payload
bytes, decode-and-sum, and the fused error-feedback step (state included), for every
elementwise compressor."""

import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.kernels.fusion import Fusion

SPECS = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:3:100", "qsgd:255:64",
         "qsgd:1:1", "qsgd:1:64:inf", "qsgd:7:1000:inf"]
SIZES = [1, 7, 8, 9, 511, 4097, 3000]


def _x(d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + d)
    return (torch.randn(d, generator=g) * 3).to(dtype)


def _pair(spec, backend):
    return from_spec(spec, backend=backend), from_spec(spec, backend="torch")


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("spec", SPECS)
def test_encode_decode_sum(kernel_backend, spec, d):
    backend, tdevice = kernel_backend
    ct, cr = _pair(spec, backend)
    xs = [_x(d, seed=s) for s in range(3)]
    pr = torch.stack([cr.encode(x, seed=11 + i) for i, x in enumerate(xs)])
    pt = torch.stack([ct.encode(x.to(tdevice), seed=11 + i) for i, x in enumerate(xs)])
    assert torch.equal(pt.cpu(), pr)
    want = cr.decode_sum(pr, d, scale=1 / 3)
    got = ct.decode_sum(pt, d, scale=1 / 3)
    assert torch.equal(got.cpu(), want)
    base = _x(d, seed=9)
    want = cr.decode_sum(pr, d, out=base.clone(), add=True)
    got = ct.decode_sum(pt, d, out=base.clone().to(tdevice), add=True)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS)
def test_half_inputs_and_outputs(kernel_backend, spec, dtype):
    backend, tdevice = kernel_backend
    ct, cr = _pair(spec, backend)
    x = _x(1000, dtype)
    pr, pt = cr.encode(x, seed=3), ct.encode(x.to(tdevice), seed=3)
    assert torch.equal(pt.cpu(), pr)
    want = cr.decode(pr, 1000, dtype=dtype)
    got = ct.decode(pt, 1000, dtype=dtype)
    assert got.dtype == dtype and torch.equal(got.cpu(), want)


@pytest.mark.parametrize("spec", SPECS)
def test_non_contiguous(kernel_backend, spec):
    backend, tdevice = kernel_backend
    ct, cr = _pair(spec, backend)
    x = _x(2 * 37 * 29).view(37, 58)[:, ::2]  # 37 x 29, strided
    assert not x.is_contiguous()
    assert torch.equal(ct.encode(x.to(tdevice), seed=1).cpu(), cr.encode(x, seed=1))
    assert torch.equal(cr.encode(x, seed=1), cr.encode(x.contiguous(), seed=1))


FUSIONS = [
    Fusion(residual="error", gamma=0.1, update="error"),  # EF14
    Fusion(residual="sub", update="add"),  # EF21
    Fusion(momentum=1, eta=0.1, residual="sub", update="add"),  # EF21-SGDM
    Fusion(momentum=2, eta=0.3, residual="sub", update="add"),  # EF21-SGD2M
    Fusion(residual="sub", update="add", beta=0.25),  # DORE worker
    Fusion(momentum=1, eta=0.5),  # momentum only
]


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"m{f.momentum}-{f.residual}-{f.update}")
@pytest.mark.parametrize("spec", ["identity", "bf16", "sign", "ssign", "qsgd:7:128",
                                  "qsgd:1:128:inf"])
def test_fused_step(kernel_backend, spec, fusion):
    backend, tdevice = kernel_backend
    ct, cr = _pair(spec, backend)
    d = 2500
    grad = _x(d, seed=4)
    state = {k: _x(d, seed=5 + i) for i, k in enumerate(fusion.state_names())}
    st = {k: v.clone().to(tdevice) for k, v in state.items()}
    sr = {k: v.clone() for k, v in state.items()}
    for step in range(2):
        pr = cr.step(fusion, grad, sr, seed=step)
        pt = ct.step(fusion, grad.to(tdevice), st, seed=step)
        assert torch.equal(pt.cpu(), pr)
        for k in state:
            assert torch.equal(st[k].cpu(), sr[k]), k


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"m{f.momentum}-{f.residual}-{f.update}")
@pytest.mark.parametrize("spec", ["identity", "fp16", "sign", "ssign", "qsgd:7:128",
                                  "qsgd:1:128:inf"])
def test_fused_equals_unfused_reference(spec, fusion):
    """The fused step is exactly prologue -> encode -> decode -> epilogue (fusion.py)."""
    from gradpack.kernels.fusion_torch import epilogue, prologue

    c = from_spec(spec, backend="torch")
    d = 777
    grad = _x(d, seed=1)
    state = {k: _x(d, seed=2 + i) for i, k in enumerate(fusion.state_names())}
    ref = {k: v.clone() for k, v in state.items()}
    payload = c.step(fusion, grad, state, seed=5)
    r = prologue(fusion, grad, ref, write=True)
    want = c.encode(r, seed=5)
    epilogue(fusion, r, c.decode(want, d, seed=5), ref)
    assert torch.equal(payload, want)
    for k in state:
        assert torch.equal(state[k], ref[k]), k


@pytest.mark.parametrize("spec", ["sign", "ssign", "qsgd:7:1000", "qsgd:3:5", "qsgd:1:40000:inf",
                                  "fp16", "bf16"])
def test_torch_chunking_is_invisible(spec, monkeypatch):
    """The torch path walks large tensors in cache-sized chunks; that changes no bit."""
    from gradpack.kernels import elementwise_torch as elementwise

    c = from_spec(spec, backend="torch")
    d = 2 * elementwise.CHUNK + 4097
    x = _x(d, seed=2)
    fusion = Fusion(residual="sub", update="add")
    h1 = _x(d, seed=3)
    h2 = h1.clone()
    chunked = c.step(fusion, x, {"h": h1}, seed=4)
    dec = c.decode_sum(torch.stack([chunked, chunked]), d, scale=0.5)
    monkeypatch.setattr(elementwise, "CHUNK", 4 * d)
    whole = c.step(fusion, x, {"h": h2}, seed=4)
    assert torch.equal(chunked, whole) and torch.equal(h1, h2)
    assert torch.equal(dec, c.decode_sum(torch.stack([whole, whole]), d, scale=0.5))


@pytest.mark.parametrize("spec", ["qsgd:7:8:inf", "qsgd:3:8", "ssign", "qsgd:1:4:inf"])
def test_tiny_norms_agree_and_decode_finite(kernel_backend, spec):
    """Buckets whose norm is subnormal or tiny (``S / n_b`` would overflow) quantize
    through the power-of-two rescaling of format.py in every backend: payloads equal, every
    decoded value finite and within the bucket's norm."""
    backend, tdevice = kernel_backend
    ct, cr = _pair(spec, backend)
    x = torch.tensor([1e-45, -3e-45, 0.0, 2e-44, 1e-40, -5e-39, 1e-30, 0.0,
                      3e-38, -1e-38, 0.0, 0.0, 1.0, -0.5, 0.25, 1e-45])
    for seed in range(8):
        pr, pt = cr.encode(x, seed=seed), ct.encode(x.to(tdevice), seed=seed)
        assert torch.equal(pt.cpu(), pr), seed
        y = cr.decode(pr, x.numel(), seed=seed)
        assert torch.isfinite(y).all()
        assert torch.equal(ct.decode(pt, x.numel(), seed=seed).cpu(), y)
