"""Issue 14, break 7 (compressor part) and transactional steps: every bad argument is a
``ValueError`` naming it, raised before anything is written.

``TypeError`` is left to Python itself (an unknown keyword, a missing argument); a value of
the wrong type (a string seed, a numpy ``out``) is a ``ValueError``, like a value out of
range. Integral numpy scalars are ints.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.compressors.qsgd import QSGD
from gradpack.compressors.spec import MAX_DEPTH
from gradpack.compressors.topk import TopK
from gradpack.kernels.fusion import Fusion

D = 64
SPECS = ["identity", "sign", "qsgd:7:16", "topk:0.1", "randk:0.1", "randk:0.5:qsgd:1:16:inf"]
SGDM = Fusion(momentum=1, eta=0.5, residual="sub", update="add")
EF14 = Fusion(residual="error", gamma=0.5, update="error")


def _x(d=D, seed=0) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _payloads(c, n=2) -> torch.Tensor:
    return torch.stack([c.encode(_x(seed=s), seed=s) for s in range(n)])


class _Guard:
    """State and an ``out`` buffer whose contents are checked unchanged after a failure."""

    def __init__(self, c):
        self.state = {"v": _x(seed=1), "h": _x(seed=2)}
        self.before = {k: v.clone() for k, v in self.state.items()}
        self.out = torch.full((c.payload_bytes(D),), 0x5A, dtype=torch.uint8)

    def unchanged(self) -> bool:
        return all(torch.equal(self.state[k], self.before[k]) for k in self.state) and bool(
            (self.out == 0x5A).all())


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("seed", ["1", 1.0, None, True, [1], -1, 2**63])
def test_bad_seed(spec, seed):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    with pytest.raises(ValueError, match="seed"):
        c.step(SGDM, _x(), g.state, seed=seed, out=g.out)
    assert g.unchanged()
    with pytest.raises(ValueError, match="seed"):
        c.decode(_payloads(c, 1)[0], D, seed=seed)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("seeds", [5, "01", ["a", 1], [1.5, 2], [0]])
def test_bad_seeds(spec, seeds):
    c = from_spec(spec, backend="torch")
    out = torch.full((D,), 2.0)
    with pytest.raises(ValueError, match="seeds"):
        c.decode_sum(_payloads(c), D, seeds=seeds, out=out, add=True)
    assert (out == 2.0).all()


def test_integral_numpy_scalars_are_ints():
    c = from_spec("randk:0.25", backend="torch")
    p = _payloads(c)
    want = c.decode_sum(p, D, seeds=[0, 1])
    assert torch.equal(c.decode_sum(p, np.int64(D), seeds=np.array([0, 1])), want)
    assert torch.equal(c.encode(_x(), seed=np.int32(0)), p[0])


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("scale", ["2", None, [1.0], torch.ones(2), float("nan"),
                                   float("inf"), -float("inf"), 1e39, 1e300, 1e-300, True])
def test_bad_scale(spec, scale):
    c = from_spec(spec, backend="torch")
    out = torch.full((D,), 2.0)
    with pytest.raises(ValueError, match="scale"):
        c.decode_sum(_payloads(c), D, seeds=[0, 1], out=out, scale=scale, add=True)
    assert (out == 2.0).all()


def test_good_scales():
    c = from_spec("sign", backend="torch")
    p = _payloads(c)
    assert not c.decode_sum(p, D, scale=0.0).any()
    assert torch.equal(c.decode_sum(p, D, scale=np.float32(0.5)), c.decode_sum(p, D, scale=0.5))


@pytest.mark.parametrize("numel", ["64", 64.0, None, True, 0, -3, 2**31])
def test_bad_numel(numel):
    c = from_spec("qsgd:7", backend="torch")
    with pytest.raises(ValueError, match="numel"):
        c.decode(_payloads(c, 1)[0], numel)
    with pytest.raises(ValueError, match="numel"):
        c.payload_bytes(numel)


@pytest.mark.parametrize("spec", SPECS)
def test_numpy_out_is_a_value_error(spec):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    with pytest.raises(ValueError, match="out"):
        c.step(SGDM, _x(), g.state, out=g.out.numpy().copy())
    assert g.unchanged()
    with pytest.raises(ValueError, match="out"):
        c.decode(_payloads(c, 1)[0], D, out=np.zeros(D, dtype=np.float32))


def _sparse():
    return _x().to_sparse()


def _meta():
    return torch.empty(D, device="meta")


def _complex():
    return torch.zeros(D, dtype=torch.complex64)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("make,match", [(_sparse, "dense"), (_meta, "meta"),
                                        (_complex, "dtype")])
def test_sparse_meta_complex_inputs(spec, make, match):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    with pytest.raises(ValueError, match=match):
        c.step(SGDM, make(), g.state, out=g.out)
    assert g.unchanged()


@pytest.mark.parametrize("spec", SPECS)
def test_sparse_meta_state_payloads_and_out(spec):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    for bad, match in ((_sparse(), "dense"), (_meta(), "meta")):
        state = {"v": g.state["v"], "h": bad}
        with pytest.raises(ValueError, match=match):
            c.step(SGDM, _x(), state, out=g.out)
        assert g.unchanged()
        with pytest.raises(ValueError, match=match):
            c.decode(_payloads(c, 1)[0], D, out=bad)
    with pytest.raises(ValueError, match="meta"):
        c.decode(torch.empty(c.payload_bytes(D), dtype=torch.uint8, device="meta"), D)
    with pytest.raises(ValueError, match="meta"):
        c.encode(_x(), out=torch.empty(c.payload_bytes(D), dtype=torch.uint8, device="meta"))


@pytest.mark.parametrize("spec", SPECS)
def test_inference_tensors_are_refused_before_any_write(spec):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    with torch.inference_mode():
        h = _x(seed=2)
    state = {"v": g.state["v"], "h": h}
    with pytest.raises(ValueError, match="inference"):
        c.step(SGDM, _x(), state, out=g.out)
    assert g.unchanged() and torch.equal(h, _x(seed=2))


@pytest.mark.parametrize("spec", SPECS)
def test_state_requiring_grad_is_updated_like_any_other(spec):
    c = from_spec(spec, backend="torch")
    a, b = _Guard(c), _Guard(c)
    for t in a.state.values():
        t.requires_grad_(True)
    pa = c.step(SGDM, _x(), a.state, seed=1)
    pb = c.step(SGDM, _x(), b.state, seed=1)
    assert torch.equal(pa, pb)
    assert all(torch.equal(a.state[k].detach(), b.state[k]) for k in a.state)


@pytest.mark.parametrize("spec", SPECS)
def test_shared_memory_is_refused(spec):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    both = torch.cat([g.state["v"], g.state["h"]])
    with pytest.raises(ValueError, match="shares* memory"):
        c.step(SGDM, _x(), {"v": both[:D], "h": both[D // 2 : D // 2 + D]}, out=g.out)
    h_bytes = g.state["h"].view(torch.uint8)
    nbytes = c.payload_bytes(D)
    if nbytes <= h_bytes.numel():
        with pytest.raises(ValueError, match="shares* memory"):
            c.step(SGDM, _x(), g.state, out=h_bytes[:nbytes])
    assert g.unchanged()
    p = _payloads(c)
    alias = p.view(-1)[: 4 * (p.numel() // 4)].view(torch.float32)[:D]
    if alias.numel() == D:
        with pytest.raises(ValueError, match="shares* memory"):
            c.decode_sum(p, D, seeds=[0, 1], out=alias)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fusion", [
    Fusion(residual="error", gamma=float("inf"), update="error"),
    Fusion(residual="error", gamma=float("nan"), update="error"),
    Fusion(residual="error", gamma=1e300, update="error"),
    Fusion(residual="sub", update="add", beta=float("inf")),
])
def test_non_finite_fusion_scalars(spec, fusion):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    with pytest.raises(ValueError, match="fusion"):
        c.step(fusion, _x(), g.state, out=g.out)
    assert g.unchanged()


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("fusion", ["ef21", None, {"residual": "sub"}])
def test_fusion_must_be_a_fusion(spec, fusion):
    c = from_spec(spec, backend="torch")
    g = _Guard(c)
    with pytest.raises(ValueError, match="Fusion"):
        c.step(fusion, _x(), g.state, out=g.out)
    with pytest.raises(ValueError, match="state"):
        c.step(EF14, _x(), [g.state["h"]], out=g.out)
    assert g.unchanged()


@pytest.mark.parametrize("spec", ["randk:0.5:" * 2000 + "ssign",
                                  "randk:0.5:" * MAX_DEPTH + "ssign", "x" * 5000])
def test_deep_or_long_specs_are_value_errors(spec):
    with pytest.raises(ValueError, match="at most"):
        from_spec(spec)


def test_depth_limit_leaves_the_real_nesting():
    assert from_spec("randk:0.5:qsgd:1:512:inf").spec == "randk:0.5:qsgd:1:512:inf"


@pytest.mark.parametrize("make", [
    lambda: QSGD("7"), lambda: QSGD(7, 16.0), lambda: QSGD(True),
    lambda: TopK(ratio="0.5"), lambda: TopK(ratio=float("nan")), lambda: TopK(count=2.0),
    lambda: TopK(count=True),
])
def test_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_python_still_raises_type_error_for_a_bad_call():
    c = from_spec("sign", backend="torch")
    with pytest.raises(TypeError):
        c.encode(_x(), sed=3)
    with pytest.raises(TypeError):
        c.decode(c.encode(_x()))
