"""Issue 14, breaks 3 and 4, compressor layer: misaligned buffers and trusted headers.

- A payload ``out=`` that does not start on an 8-byte boundary is a ``ValueError`` raised
  before anything is written: a fused EF21-SGDM step leaves its momentum and ``h``
  bit-identical (it used to write the momentum, then fail in ``view(torch.int32)``).
- A payload to decode at an odd storage offset is an input: it is copied and decodes
  exactly like an aligned one.
- Decoding checks the fp32 header values (``Format.header_words``: sign's scale, ssign's
  norm, QSGD's bucket norms: finite and ``>= 0``) and the values of the value codes (finite),
  raising ``CorruptPayloadError`` naming the row and the field before ``out`` is touched,
  also through Random-K's value code and through an algorithm's aggregate;
  ``check_finite=False`` skips that check. Top-K's index check raises the same type.
"""

from __future__ import annotations

import struct

import pytest
import torch

from gradpack.algorithms import from_spec as algorithm
from gradpack.compressors import from_spec
from gradpack.errors import CorruptPayloadError, NonFiniteError
from gradpack.kernels.format import Kind
from gradpack.kernels.fusion import Fusion
from tests.backends import CPU_BACKENDS

BACKENDS = CPU_BACKENDS
SPECS = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:7:16", "qsgd:3:16:inf",
         "topk:0.1", "topk:0.1:approx", "randk:0.1", "randk:0.1:biased",
         "randk:0.5:qsgd:1:16:inf", "randk:0.3:ssign"]
HEADER_SPECS = ["sign", "ssign", "qsgd:7:16", "qsgd:3:16:inf", "randk:0.5:qsgd:1:16:inf",
                "randk:0.3:ssign"]
SGDM = Fusion(momentum=1, eta=0.25, residual="sub", update="add")  # EF21-SGDM's worker step
D = 100
CANARY = 0xA5


def _x(d=D, seed=0) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * 3


def _state(d=D) -> dict[str, torch.Tensor]:
    return {"v": _x(d, 1), "h": _x(d, 2)}


def _f32_bytes(value: float) -> torch.Tensor:
    return torch.tensor(list(struct.pack("<f", value)), dtype=torch.uint8)


# -- break 3: alignment ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("offset", [1, 2, 3, 4, 6])
def test_misaligned_out_fails_before_the_fused_step_writes(spec, backend, offset):
    c = from_spec(spec, backend=backend)
    nbytes = c.payload_bytes(D)
    state = _state()
    before = {k: v.clone() for k, v in state.items()}
    big = torch.full((nbytes + 16,), CANARY, dtype=torch.uint8)
    out = big[offset : offset + nbytes]
    assert out.is_contiguous()
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is checked last
        c.step(SGDM, _x(), state, seed=3, out=out)
    for k in state:
        assert torch.equal(state[k], before[k]), f"state {k!r} was written"
    assert (big == CANARY).all()
    assert info.type is ValueError and "multiple of 8 bytes" in str(info.value), info.value


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
def test_aligned_slice_of_a_larger_buffer_is_used_in_place(spec, backend):
    c = from_spec(spec, backend=backend)
    nbytes = c.payload_bytes(D)
    s1, s2 = _state(), _state()
    big = torch.full((nbytes + 24,), CANARY, dtype=torch.uint8)
    got = c.step(SGDM, _x(), s1, seed=3, out=big[8 : 8 + nbytes])
    want = c.step(SGDM, _x(), s2, seed=3)
    assert got.data_ptr() == big[8:].data_ptr()
    assert torch.equal(got, want)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert (big[:8] == CANARY).all() and (big[8 + nbytes :] == CANARY).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS)
def test_misaligned_payloads_are_copied_and_decode_the_same(spec, backend):
    c = from_spec(spec, backend=backend)
    p = torch.stack([c.encode(_x(seed=s), seed=s) for s in range(3)])
    want1 = c.decode(p[1], D, seed=1)
    want = c.decode_sum(p, D, seeds=[0, 1, 2])
    n, nbytes = p.shape
    for offset in (1, 2, 3, 4, 5):
        flat = torch.zeros(n * nbytes + offset, dtype=torch.uint8)
        rows = flat[offset:].view(n, nbytes)
        rows.copy_(p)
        assert rows.is_contiguous() and rows.data_ptr() % 8 != 0
        assert torch.equal(c.decode(rows[1], D, seed=1), want1)
        assert torch.equal(c.decode_sum(rows, D, seeds=[0, 1, 2]), want)
        assert torch.equal(rows, p)  # the input is read, never written


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_out_must_be_aligned_to_its_element_size(backend):
    c = from_spec("qsgd:7", backend=backend)
    p = c.encode(_x())
    raw = bytearray(4 * D + 2)
    out = torch.frombuffer(memoryview(raw)[2:], dtype=torch.float32)
    assert out.data_ptr() % 4 == 2
    with pytest.raises(ValueError, match="aligned"):
        c.decode(p, D, out=out)
    assert raw == bytearray(4 * D + 2)


# -- break 4: headers and values -------------------------------------------------------------
def _code(c):
    """The elementwise code whose header a payload of ``c`` for ``D`` elements starts with,
    and its element count (Random-K's value code codes ``K`` elements)."""
    if getattr(c, "values", None) is not None:
        return c.values.format(c.k(D)), c.k(D)
    return c.format(D), D


def _field(fmt, word: int) -> str:
    if fmt.kind == Kind.QSGD:
        return f"bucket {word} {'max-norm' if fmt.maxnorm else 'norm'}"
    return "scale" if fmt.kind == Kind.SIGN else "norm"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", HEADER_SPECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), -1.0, -1e-45])
def test_corrupt_header_is_named_and_nothing_is_written(spec, backend, bad):
    c = from_spec(spec, backend=backend)
    p = torch.stack([c.encode(_x(seed=s), seed=s) for s in range(4)])
    fmt, numel = _code(c)
    row, word = 2, fmt.header_words(numel) - 1
    p[row, 4 * word : 4 * word + 4] = _f32_bytes(bad)
    canvas = torch.full((D + 8,), 7.0)
    out = canvas[4 : 4 + D]
    field = _field(fmt, word)
    with pytest.raises(CorruptPayloadError, match=f"row {row}, {field} is "):
        c.decode_sum(p, D, seeds=[0, 1, 2, 3], out=out, add=True)
    with pytest.raises(CorruptPayloadError, match=f"row 0, {field} is "):
        c.decode(p[row], D, seed=row, out=out)
    assert (canvas == 7.0).all()
    # check_finite=False skips the check (and its host read): no error
    unchecked = from_spec(spec, backend=backend, check_finite=False)
    unchecked.decode_sum(p, D, seeds=[0, 1, 2, 3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ["identity", "fp16", "bf16", "topk:0.1", "randk:0.1",
                                  "randk:0.1:biased"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_corrupt(spec, backend, bad):
    c = from_spec(spec, backend=backend)
    p = torch.stack([c.encode(_x(seed=s), seed=s) for s in range(3)])
    row, j = 1, 2
    if spec == "fp16":
        p[row, 2 * j : 2 * j + 2] = torch.tensor([bad], dtype=torch.float16).view(torch.uint8)
    elif spec == "bf16":
        p[row, 2 * j : 2 * j + 2] = torch.tensor([bad], dtype=torch.bfloat16).view(torch.uint8)
    else:
        p[row, 4 * j : 4 * j + 4] = _f32_bytes(bad)
    out = torch.full((D,), 3.0)
    with pytest.raises(CorruptPayloadError, match=f"row {row}, value {j} is "):
        c.decode_sum(p, D, seeds=[0, 1, 2], out=out, add=True)
    assert (out == 3.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ["topk:0.1", "topk:0.1:approx"])
@pytest.mark.parametrize("check_finite", [True, False])
def test_topk_bad_index_is_a_corrupt_payload(spec, backend, check_finite):
    c = from_spec(spec, backend=backend, check_finite=check_finite)
    k = c.k(D)
    p = torch.stack([c.encode(_x(seed=s)) for s in range(3)])
    p[2, 4 * k :] = 0xFF  # every index field all ones: 127 >= D, and not increasing
    out = torch.full((D,), 3.0)
    with pytest.raises(CorruptPayloadError, match="row 2"):
        c.decode_sum(p, D, out=out, add=True)
    assert (out == 3.0).all()


def test_the_unchecked_path_really_decodes_the_corrupt_header():
    """What the check prevents: without it, the corrupt norm reaches ``out``."""
    c = from_spec("qsgd:7:16", backend="torch", check_finite=False)
    p = c.encode(_x())
    p[:4] = _f32_bytes(float("nan"))
    assert torch.isnan(c.decode(p, D)[:16]).any()


@pytest.mark.parametrize("name,spec,word,field", [
    ("ef21", "sign", 0, "scale"), ("ef21-sgdm", "sign", 0, "scale"),
    ("dcgd", "qsgd:7:16", 3, "bucket 3 norm"),
])
def test_algorithm_aggregate_rejects_a_corrupt_header_and_keeps_its_state(name, spec, word,
                                                                          field):
    alg = algorithm(name, from_spec(spec, backend="torch"))
    states = [alg.init_state(D, world_size=2, rank=r) for r in range(2)]

    def round_(step):
        return torch.stack([alg.worker_step(states[r], _x(seed=10 * step + r), step=step,
                                            rank=r) for r in range(2)])

    alg.aggregate(states[0], round_(0), step=0)
    payloads = round_(1)
    payloads[1, 4 * word : 4 * word + 4] = _f32_bytes(float("inf"))
    server = {k: v.clone() for k, v in states[0].items() if isinstance(v, torch.Tensor)}
    with pytest.raises(CorruptPayloadError, match=f"row 1, {field} is inf"):
        alg.aggregate(states[0], payloads, step=1)
    for k, v in server.items():
        assert torch.equal(states[0][k], v), f"server state {k!r} changed"


def test_non_finite_input_is_a_non_finite_error():
    c = from_spec("sign", backend="torch")
    x = _x()
    x[5] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        c.encode(x)
