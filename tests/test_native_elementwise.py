"""The native CPU elementwise kernels (numba) equal the torch twin bit for bit: payload
bytes and every state tensor of the fused encode, and decode-and-sum, for every format,
fusion, size, input and output dtype, on one thread or two; hostile payloads decode
without reading or writing out of bounds; the integer fp16/bf16 conversions equal torch's.

Numba must not contract ``a * b + c`` into a fused multiply-add: the fused EF14
(``h + gamma * src``) and momentum (``v * keep + src * take``) steps below would differ from
the twin in about a quarter of the elements if it did."""

import numba as nb
import numpy as np
import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.kernels import elementwise as ew
from gradpack.kernels import elementwise_cpu, fusion_cpu
from gradpack.kernels.fusion import Fusion
from gradpack.kernels.native import JIT
from tests.test_elementwise_twins import FUSIONS

SPECS = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:3:100", "qsgd:255:64",
         "qsgd:1:1", "qsgd:1:64:inf", "qsgd:7:1000:inf", "qsgd:4"]
SIZES = [1, 7, 8, 9, 511, 4097, 3000]
PLAIN = Fusion()
HALVES = {torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _x(d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed * 1000 + d)
    return (torch.randn(d, generator=g) * 3).to(dtype)


def _bits(t):
    """A tensor's raw bits (bit-exact comparisons that see -0.0 and NaN payloads)."""
    return t.view(HALVES.get(t.dtype, torch.int32)) if t.dtype != torch.uint8 else t


def _encode_both(spec, fusion, x, state, seed):
    """Payload and state after one step on each backend; the native payload starts as
    garbage past the body, which it must leave alone."""
    c = from_spec(spec, backend="torch")
    d = x.numel()
    fmt = c.format(d)
    nbytes = c.payload_bytes(d)
    ref = {k: t.clone() for k, t in state.items()}
    nat = {k: t.clone() for k, t in state.items()}
    want = torch.zeros(nbytes, dtype=torch.uint8)
    ew.encode(fmt, fusion, x, ref, seed, want, "torch")
    got = torch.full((nbytes,), 0xAB, dtype=torch.uint8)
    elementwise_cpu.encode(fmt, fusion, x, nat, seed, got)
    body = fmt.body_bytes(d)
    assert torch.all(got[body:] == 0xAB), "native encode wrote past the body"
    return (want[:body], ref), (got[:body], nat)


def _assert_same_step(spec, fusion, x, state, seed):
    (want, ref), (got, nat) = _encode_both(spec, fusion, x, state, seed)
    assert torch.equal(got, want)
    for k in state:
        assert torch.equal(_bits(nat[k]), _bits(ref[k])), k


def _decode_both(spec, payloads, d, out, scale, add):
    fmt = from_spec(spec, backend="torch").format(d)
    want, got = out.clone(), out.clone()
    ew.decode_sum(fmt, payloads, d, want, scale, add, "torch")
    elementwise_cpu.decode_sum(fmt, payloads, d, got, scale, add)
    return want, got


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("spec", SPECS)
def test_encode_decode_sum(spec, d):
    c = from_spec(spec, backend="torch")
    rows = []
    for s in range(3):
        (want, _), (got, _) = _encode_both(spec, PLAIN, _x(d, s), {}, 11 + s)
        assert torch.equal(got, want)
        rows.append(c.encode(_x(d, s), seed=11 + s))
    payloads = torch.stack(rows)
    want, got = _decode_both(spec, payloads, d, torch.empty(d), 1 / 3, False)
    assert torch.equal(_bits(got), _bits(want))
    want, got = _decode_both(spec, payloads, d, _x(d, 9), 1.0, True)
    assert torch.equal(_bits(got), _bits(want))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS)
def test_half_inputs(spec, dtype):
    _assert_same_step(spec, FUSIONS[2], _x(1000, 1, dtype),
                      {k: _x(1000, 2 + i) for i, k in enumerate(FUSIONS[2].state_names())}, 3)


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"m{f.momentum}-{f.residual}-{f.update}")
@pytest.mark.parametrize("spec", SPECS)
def test_fused_step(spec, fusion):
    d = 2500
    state = {k: _x(d, 5 + i) for i, k in enumerate(fusion.state_names())}
    x = _x(d, 4)
    for step in range(2):  # the second step starts from the first one's state
        (want, ref), (got, nat) = _encode_both(spec, fusion, x, state, step)
        assert torch.equal(got, want)
        for k in state:
            assert torch.equal(_bits(nat[k]), _bits(ref[k])), k
        state = ref


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS)
def test_decode_sum_options(spec, out_dtype):
    d = 3000
    c = from_spec(spec, backend="torch")
    payloads = torch.stack([c.encode(_x(d, s), seed=s) for s in range(3)])
    base = _x(d, 7, out_dtype)
    for n in (1, 3):
        for scale in (1.0, 1 / 3):
            for add in (False, True):
                want, got = _decode_both(spec, payloads[:n].contiguous(), d, base, scale, add)
                assert got.dtype == out_dtype
                assert torch.equal(_bits(got), _bits(want)), (n, scale, add)


@pytest.mark.parametrize("spec", ["fp16", "bf16", "qsgd:7:64", "qsgd:1:8:inf", "ssign"])
def test_extreme_values(spec):
    """Rounding edges, fp16 overflow (clamped), subnormals, zeros of both signs, tiny and
    huge buckets."""
    vals = [0.0, -0.0, 1e-45, -3e-39, 6e-8, 2.98e-8, 5.96e-8, 1e-5, 65504.0, 65519.0, 65520.0,
            -7e4, 1e30, -3.4e38, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 1.0009765625, 2.0**-14,
            2.0**-15 * 1.5, -(2.0**-24) * 0.5, 2.0**-24 * 0.75, 3.0, 1e-42, 1e-40, 1e-38]
    x = torch.tensor(vals * 5, dtype=torch.float32)
    x[64:] = torch.tensor(vals * 5)[64:] * 1e-30  # tiny buckets (qsgd's TINY scaling)
    state = {"h": torch.zeros_like(x)}
    _assert_same_step(spec, Fusion(residual="sub", update="add"), x, state, 5)


@pytest.mark.parametrize("spec", SPECS)
def test_hostile_payloads(spec):
    """Random bytes decode without crashing and without touching memory past ``out``; where
    the twin's result is a number the native one is the same number."""
    d = 3001
    c = from_spec(spec, backend="torch")
    nbytes = c.payload_bytes(d)
    g = torch.Generator().manual_seed(len(spec))
    payloads = torch.randint(0, 256, (3, nbytes), generator=g, dtype=torch.uint8)
    for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
        buf = torch.full((d + 64,), 7.0, dtype=out_dtype)
        out = buf[:d]
        fmt = c.format(d)
        elementwise_cpu.decode_sum(fmt, payloads, d, out, 0.5, True)
        assert torch.all(buf[d:] == 7.0)
        want = torch.full((d,), 7.0, dtype=out_dtype)
        ew.decode_sum(fmt, payloads, d, want, 0.5, True, "torch")
        nan = want.isnan()
        assert torch.equal(out.isnan(), nan)
        assert torch.equal(_bits(out)[~nan], _bits(want)[~nan])


def test_thread_count_does_not_matter():
    d = 300_001  # several threads' worth of blocks
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for spec, fusion in [("sign", FUSIONS[1]), ("qsgd:4", FUSIONS[1]),
                                 ("fp16", FUSIONS[1]), ("sign", Fusion(residual="sub"))]:
                c = from_spec(spec, backend="torch")
                state = {"h": _x(d, 1)}
                payload = torch.zeros(c.payload_bytes(d), dtype=torch.uint8)
                elementwise_cpu.encode(c.format(d), fusion, _x(d, 2), state, 3, payload)
                out = torch.empty(d)
                elementwise_cpu.decode_sum(c.format(d), torch.stack([payload, payload]), d,
                                           out, 0.5, False)
                results.append((payload, state["h"], out))
    finally:
        torch.set_num_threads(old)
    for one, two in zip(results[:4], results[4:], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


@pytest.mark.parametrize("d", [1, 33, 1025, 70_001])
@pytest.mark.parametrize("fusion", [PLAIN, Fusion(residual="sub"),
                                    Fusion(residual="error", gamma=0.3)], ids=str)
def test_sign_single_pass(fusion, d):
    """Sign without an epilogue packs its bits in the stats pass."""
    state = {k: _x(d, 2) for k in fusion.state_names()}
    _assert_same_step("sign", fusion, _x(d, 1), state, 0)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["sign", "ssign", "qsgd:4", "fp16", "qsgd:7:1000:inf"])
def test_large(spec):
    d = 1_048_576 + 4099
    fusion = FUSIONS[2]
    state = {k: _x(d, 3 + i) for i, k in enumerate(fusion.state_names())}
    _assert_same_step(spec, fusion, _x(d, 1), state, 7)
    c = from_spec(spec, backend="torch")
    payloads = torch.stack([c.encode(_x(d, s), seed=s) for s in range(2)])
    want, got = _decode_both(spec, payloads, d, _x(d, 5), 0.25, True)
    assert torch.equal(got, want)


def test_bad_arguments():
    c = from_spec("qsgd:4", backend="torch")
    d = 100
    fmt = c.format(d)
    ok = torch.zeros(c.payload_bytes(d), dtype=torch.uint8)
    with pytest.raises(ValueError, match="payload"):
        elementwise_cpu.encode(fmt, PLAIN, torch.randn(d), {}, 0, ok[:-12])
    with pytest.raises(ValueError, match="contiguous"):
        elementwise_cpu.encode(fmt, PLAIN, torch.randn(d, 2)[:, 0], {}, 0, ok)
    with pytest.raises(ValueError, match="state"):
        elementwise_cpu.encode(fmt, FUSIONS[1], torch.randn(d), {}, 0, ok)
    with pytest.raises(ValueError, match="bytes"):
        elementwise_cpu.decode_sum(fmt, ok[None, :-12].contiguous(), d, torch.empty(d), 1.0,
                                   False)
    with pytest.raises(ValueError, match="out"):
        elementwise_cpu.decode_sum(fmt, ok[None], d, torch.empty(d - 1), 1.0, False)


# -- the integer fp16 / bf16 conversions against torch's -----------------------------------
# (not cached on disk: numba's cache would not notice a change in fusion_cpu)
_JIT = dict(JIT, cache=False)


@nb.njit(**_JIT)
def _to_half(x, out):
    for i in range(x.shape[0]):
        out[i] = np.int16(fusion_cpu.f32_to_half(x[i]))


@nb.njit(**_JIT)
def _to_bf16(x, out):
    for i in range(x.shape[0]):
        out[i] = np.int16(fusion_cpu.f32_to_bf16(x[i]))


@nb.njit(**_JIT)
def _from_half(h, out):
    for i in range(h.shape[0]):
        out[i] = fusion_cpu.half_to_f32(h[i])


def _patterns() -> torch.Tensor:
    """fp32 bit patterns: every sign and exponent with mantissas at and around every
    rounding boundary an fp16 or bf16 conversion can have (bit k for k = 0..23: exactly
    half, one below, one above, with even and odd kept bits), plus random patterns."""
    m = [0, 1, 0x7FFFFF, 0x400000, 0x3FFFFF]
    for k in range(1, 24):
        half = 1 << (k - 1)
        for kept in (0, 1, 2, 3, 0x7FFFFF >> k):
            base = (kept << k) & 0x7FFFFF
            m += [base | (half - 1), base | half, base | (half + 1), base | ((1 << k) - 1)]
    mant = torch.tensor(sorted(set(m)), dtype=torch.int64)
    exps = torch.arange(256, dtype=torch.int64) << 23
    pats = (exps[:, None] | mant[None, :]).reshape(-1)
    pats = torch.cat([pats, pats | (1 << 31)])
    rnd = torch.randint(0, 2**32, (1 << 18,), generator=torch.Generator().manual_seed(0))
    pats = torch.cat([pats, rnd])
    return (pats - ((pats >> 31) << 32)).to(torch.int32).view(torch.float32)


def _check_conversions(x: torch.Tensor, bf16=None) -> None:
    """fp16 against torch's ``.half()``; bf16 against ``bf16(x)`` (default: the twin's
    integer ``to_bf16``, the spec)."""
    got = np.empty(x.numel(), dtype=np.int16)
    _to_half(x.numpy(), got)
    assert np.array_equal(got, x.half().view(torch.int16).numpy())
    _to_bf16(x.numpy(), got)
    want = (bf16 or _twin_to_bf16)(x)
    assert np.array_equal(got, want.view(torch.int16).numpy())


def _twin_to_bf16(x):
    try:
        from gradpack.kernels.elementwise_torch import to_bf16
    except ImportError:
        from gradpack.kernels.elementwise import to_bf16
    return to_bf16(x)


def test_conversions_structured_sample():
    _check_conversions(_patterns())


def test_half_to_f32_every_pattern():
    h = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    got = np.empty(h.numel(), dtype=np.float32)
    _from_half(h.numpy(), got)
    assert np.array_equal(got.view(np.int32), h.view(torch.float16).float().view(torch.int32))


def _fast_bf16(x):
    """torch's own fp32 -> bf16 rounding, with the spec's NaN (torch's NaN bits differ)."""
    return torch.where(x.isnan(), torch.tensor(0x7FC0, dtype=torch.int16),
                       x.bfloat16().view(torch.int16))


def test_fast_bf16_is_the_spec():
    """:func:`_fast_bf16` equals the twin's ``to_bf16`` (the exhaustive test uses it)."""
    x = _patterns()
    assert torch.equal(_fast_bf16(x), _twin_to_bf16(x).view(torch.int16))


@pytest.mark.slow
def test_conversions_every_fp32_pattern():
    step = 1 << 24
    for lo in range(-(2**31), 2**31, step):
        x = torch.arange(lo, lo + step, dtype=torch.int32).view(torch.float32)
        _check_conversions(x, bf16=_fast_bf16)
