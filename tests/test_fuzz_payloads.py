"""Issue 14: a bounded fuzz test of the compressor layer (hypothesis; derandomized, no
example database, the whole file well under a minute on two CPU cores).

For every registered compressor family (the spec list below must cover
``gradpack.compressors.names()``), on the torch backend and the native ``cpu`` one:

- ``decode``/``decode_sum`` of hostile payloads (random bytes, nan/inf/negative/huge header
  and value words, flipped bytes, bad Top-K index fields, wrong lengths, dtypes, ranks,
  devices, misaligned views) into hostile ``out`` buffers (slices of a canary-filled tensor,
  fp32/fp16/bf16, wrong sizes, misaligned);
- ``step`` with hostile gradients (nan/inf, wrong dtypes, empty) and buffers (misaligned or
  wrong-size ``out``, wrong, missing or non-contiguous state tensors).

Asserted: every failure is a ``ValueError`` (subclass); on failure nothing at all was
written (``out``, its canvas, the state); on success nothing outside ``out`` was written and
the output is finite wherever the payload's own magnitude bound says it must be (a sum of
valid rows can overflow fp32, or an fp16 ``out``, only when that bound does).
"""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradpack.compressors import from_spec, names
from gradpack.kernels.format import Kind
from gradpack.kernels.fusion import Fusion
from tests.backends import CPU_BACKENDS

BACKENDS = CPU_BACKENDS
SPECS = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:5:8", "qsgd:3:8:inf",
         "topk:0.25", "topk:3:approx", "randk:0.25", "randk:0.25:biased",
         "randk:0.5:qsgd:1:8:inf", "randk:3:ssign"]
COMPRESSORS = {(s, b): from_spec(s, backend=b) for s in SPECS for b in BACKENDS}
SPECIAL = [float("nan"), float("inf"), -float("inf"), -1.0, -0.0, 0.0, 3e38, -3e38, 1e-45,
           1.0, 65504.0, 1e30]
CANARY = -7.25
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_every_registered_family_is_fuzzed():
    assert {s.split(":")[0] for s in SPECS} == set(names())


def _x(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * 4


def _f32(value: float) -> list[int]:
    return list(struct.pack("<f", value))


# -- magnitude bound of a decode ---------------------------------------------------------------
def _code(c, d):
    """The elementwise code and element count of ``c``'s payload for ``d`` elements, or
    ``(None, K)`` for plain sparse fp32 values."""
    values = getattr(c, "values", None)
    if values is not None:
        return values.format(c.k(d)), c.k(d)
    if hasattr(c, "format"):
        return c.format(d), d
    return None, c.k(d)


def _row_bound(c, row: torch.Tensor, d: int) -> float | None:
    """An upper bound (float64) of ``max |C_i|`` for one payload row, read as the decoder
    reads it, or ``None`` when the row is corrupt: a header that is not finite and
    ``>= 0``, or a value that is not finite (decoding must refuse it)."""
    fmt, m = _code(c, d)
    header = fmt is not None and fmt.packed
    if fmt is None or fmt.kind == Kind.FP32:
        vals = row[: 4 * m].view(torch.float32)
    elif fmt.kind in (Kind.FP16, Kind.BF16):
        vals = row[: 2 * m].view(torch.float16 if fmt.kind == Kind.FP16 else torch.bfloat16)
    else:
        vals = row[: 4 * fmt.header_words(m)].view(torch.float32)
    v = vals.double()
    if not bool(torch.isfinite(v).all()) or (header and bool((v < 0).any())):
        return None
    bound = float(v.abs().max())
    if header and fmt.kind == Kind.QSGD:  # a level field may exceed S
        bound *= ((1 << fmt.level_bits) - 1) / fmt.levels * (1 + 2**-20)
    return bound


def _must_be_finite(c, payloads, d, scale, out_before, add, dtype) -> bool:
    """Whether the decode that succeeded must have a finite output; fails the test when it
    should have raised (a corrupt row)."""
    payloads = payloads.clone()  # aligned, to be read as words
    bounds = [_row_bound(c, r, d) for r in payloads]
    corrupt = [i for i, b in enumerate(bounds) if b is None]
    assert not corrupt, f"corrupt rows {corrupt} were decoded without an error"
    total = sum(bounds) * abs(scale)
    if add:
        total += float(out_before.double().abs().max())
    return total < torch.finfo(dtype).max / 2


# -- hostile payloads --------------------------------------------------------------------------
@st.composite
def _payloads(draw, c, d: int, n: int):
    """``(payloads, aligned_copy_or_None)``: rows made hostile in one of several ways."""
    nbytes = c.payload_bytes(d)
    good = torch.stack([c.encode(_x(d, s), seed=s) for s in range(n)])
    kind = draw(st.sampled_from(["valid", "random", "special", "flip", "index", "length",
                                 "dtype", "ndim"]))
    p = good.clone()
    if kind == "random":
        raw = draw(st.binary(min_size=n * nbytes, max_size=n * nbytes))
        p = torch.tensor(list(raw), dtype=torch.uint8).view(n, nbytes)
    elif kind == "special":
        for _ in range(draw(st.integers(1, 3))):
            row = draw(st.integers(0, n - 1))
            word = draw(st.integers(0, nbytes // 4 - 1))
            p[row, 4 * word : 4 * word + 4] = torch.tensor(_f32(draw(st.sampled_from(SPECIAL))),
                                                          dtype=torch.uint8)
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            p[draw(st.integers(0, n - 1)), draw(st.integers(0, nbytes - 1))] = draw(
                st.integers(0, 255))
    elif kind == "index" and c.name == "topk":
        k = c.k(d)
        lo = min(4 * k, nbytes - 1)
        p[draw(st.integers(0, n - 1)), lo:] = draw(st.integers(0, 255))
    elif kind == "length":
        extra = draw(st.sampled_from([-8, -4, -1, 1, 4, 8]))
        p = torch.zeros(n, max(nbytes + extra, 0), dtype=torch.uint8)
    elif kind == "dtype":
        p = p.view(torch.int32) if draw(st.booleans()) else p.float()
    elif kind == "ndim":
        p = p.view(-1) if n > 1 else p.view(1, 1, -1)
    offset = draw(st.sampled_from([0, 0, 1, 2, 3, 4, 5, 7]))
    if offset and p.dtype == torch.uint8 and p.dim() == 2:
        flat = torch.zeros(p.numel() + offset, dtype=torch.uint8)
        view = flat[offset:].view(p.shape)
        view.copy_(p)
        p = view
    return p


@st.composite
def _out(draw, d: int):
    """``(canvas, out or None, add)``: out a slice of a canary-filled canvas."""
    if draw(st.integers(0, 5)) == 0:
        return None, None, False
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16]))
    size = d + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    offset = draw(st.integers(0, 3))
    canvas = torch.full((size + offset + 5,), CANARY, dtype=dtype)
    out = canvas[offset : offset + max(size, 0)]
    if draw(st.integers(0, 7)) == 0:  # misaligned: a float view at an odd byte address
        raw = torch.full((out.numel() * out.element_size() + 3,), 0x3C, dtype=torch.uint8)
        canvas = raw
        out = torch.frombuffer(memoryview(raw.numpy())[1:], dtype=dtype,
                               count=out.numel()) if out.numel() else out
    return canvas, out, draw(st.booleans())


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
@SETTINGS
def test_hostile_decode(backend, data):
    spec = data.draw(st.sampled_from(SPECS), label="spec")
    c = COMPRESSORS[spec, backend]
    d = data.draw(st.integers(1, 70), label="d")
    n = data.draw(st.integers(1, 3), label="n")
    payloads = data.draw(_payloads(c, d, n), label="payloads")
    canvas, out, add = data.draw(_out(d), label="out")
    single = data.draw(st.booleans(), label="decode") and payloads.dim() == 2 and n == 1
    scale = 1.0 if single else data.draw(st.sampled_from([1.0, 0.5, -2.0, 1e-3]), label="scale")
    canvas_before = None if canvas is None else canvas.clone()
    out_before = None if out is None else out.clone()
    payloads_before = payloads.clone()
    seeds = list(range(payloads.shape[0])) if payloads.dim() >= 1 else []
    try:
        if single:
            got = c.decode(payloads[0], d, seed=0, out=out, add=add)
        else:
            got = c.decode_sum(payloads, d, seeds=seeds, out=out, scale=scale, add=add)
    except ValueError:
        if canvas is not None:
            assert torch.equal(canvas, canvas_before), "written before the error"
        assert torch.equal(payloads, payloads_before)
        return
    assert torch.equal(payloads, payloads_before), "a payload (an input) was written"
    if out is not None:
        assert got.data_ptr() == out.data_ptr()
        outside = torch.ones(canvas.numel() * canvas.element_size(), dtype=torch.bool)
        start = out.data_ptr() - canvas.data_ptr()
        outside[start : start + out.numel() * out.element_size()] = False
        raw_now = canvas.view(torch.uint8) if canvas.dtype != torch.uint8 else canvas
        raw_before = (canvas_before.view(torch.uint8) if canvas_before.dtype != torch.uint8
                      else canvas_before)
        assert torch.equal(raw_now[outside], raw_before[outside]), "wrote outside out"
    dtype = got.dtype
    if _must_be_finite(c, payloads, d, scale, out_before, add and out is not None, dtype):
        assert bool(torch.isfinite(got).all()), "non-finite output from checked payloads"


# -- hostile steps ------------------------------------------------------------------------------
FUSIONS = [Fusion(), Fusion(momentum=1, eta=0.5, residual="sub", update="add"),
           Fusion(momentum=2, eta=0.25, residual="sub", update="add"),
           Fusion(residual="error", gamma=0.5, update="error"),
           Fusion(residual="sub", update="add", beta=0.5)]


@st.composite
def _grad(draw, d: int):
    kind = draw(st.sampled_from(["ok", "ok", "ok", "special", "dtype", "strided", "empty"]))
    x = _x(d, draw(st.integers(0, 3)))
    if kind == "special":
        x[draw(st.integers(0, d - 1))] = draw(st.sampled_from(SPECIAL))
    elif kind == "dtype":
        x = x.to(draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64,
                                       torch.int32])))
    elif kind == "strided":
        x = torch.stack([x, x], 1)[:, 0]
    elif kind == "empty":
        x = x[:0]
    return x


@st.composite
def _state(draw, d: int):
    state = {k: _x(d, 10 + i) for i, k in enumerate(("v", "u", "h"))}
    kind = draw(st.sampled_from(["ok", "ok", "missing", "dtype", "size", "strided"]))
    key = draw(st.sampled_from(["v", "u", "h"]))
    if kind == "missing":
        del state[key]
    elif kind == "dtype":
        state[key] = state[key].double()
    elif kind == "size":
        state[key] = _x(d + 1, 3)
    elif kind == "strided":
        state[key] = torch.stack([state[key], state[key]], 1)[:, 0]
    return state


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
@SETTINGS
def test_hostile_step(backend, data):
    spec = data.draw(st.sampled_from(SPECS), label="spec")
    c = COMPRESSORS[spec, backend]
    d = data.draw(st.integers(1, 70), label="d")
    fusion = data.draw(st.sampled_from(FUSIONS), label="fusion")
    grad = data.draw(_grad(d), label="grad")
    state = data.draw(_state(d), label="state")
    nbytes = c.payload_bytes(d)
    offset = data.draw(st.sampled_from([None, 0, 0, 8, 1, 2, 4]), label="out offset")
    size = nbytes + data.draw(st.sampled_from([0, 0, 0, -8, 8]), label="out size")
    canvas = torch.full((max(size, 0) + 24,), 0xC3, dtype=torch.uint8)
    out = None if offset is None else canvas[offset : offset + max(size, 0)]
    seed = data.draw(st.integers(0, 2**40), label="seed")
    before = {k: v.clone() for k, v in state.items()}
    canvas_before = canvas.clone()
    grad_before = grad.clone()
    try:
        got = c.step(fusion, grad, state, seed=seed, out=out)
    except ValueError:
        assert all(torch.equal(state[k], before[k]) for k in state), "state written"
        assert torch.equal(canvas, canvas_before), "out written before the error"
        assert torch.equal(grad, grad_before)
        return
    assert torch.equal(grad, grad_before), "the gradient (an input) was written"
    if out is not None:
        assert got.data_ptr() == out.data_ptr()
        assert torch.equal(canvas[:offset], canvas_before[:offset])
        assert torch.equal(canvas[offset + nbytes :], canvas_before[offset + nbytes :])
    if float(grad.double().abs().max()) < 1e15:  # no overflow possible (issue 14 break 1
        for k in fusion.state_names():       # is the kernels' part: huge finite inputs)
            assert bool(torch.isfinite(state[k]).all()), f"state {k!r} became non-finite"
        assert bool(torch.isfinite(c.decode(got, d, seed=seed)).all())
