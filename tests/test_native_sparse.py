"""The native CPU sparsifiers (numba: kernels/topk_cpu.py, randk_cpu.py, sparse_cpu.py)
equal their torch twins bit for bit: Top-K exact and threshold payloads on every input
kind of tests/test_topk.py, Random-K indices (complement and K = d included), plain,
biased and value-coded payloads, every fusion's state updates, fp32/fp16/bf16 inputs,
decode-and-sum (n rows, scale, add, fp32/fp16/bf16 out), corrupt Top-K payloads
rejected before anything is written, and the same results on 1 and 2 threads.

Payloads start as different garbage on the two sides, so a byte the native side does not
write shows up as a mismatch."""

import numpy as np
import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.compressors.randk import VALUE_STREAM
from gradpack.kernels import randk as kr
from gradpack.kernels import randk_cpu, sparse_cpu, sparse_torch, topk_cpu
from gradpack.kernels import topk as kt
from gradpack.kernels.bitpack import words_for
from gradpack.kernels.bitpack_torch import pack_words, unpack_fields
from gradpack.kernels.fusion import PLAIN
from gradpack.kernels.philox import derive_seed
from tests.test_elementwise_twins import FUSIONS
from tests.test_topk import KINDS, make

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BIG = 1_100_003  # >= 1M, spans many parallel blocks


def fusion_id(f):
    return f"m{f.momentum}-{f.residual}-{f.update}-b{f.beta}"


def counts(d: int) -> list[int]:
    """K for the ratios 0.01, 0.1, 0.5, 1.0 (as topk:R computes it) and the counts 1, 2, d-1."""
    ks_ = {from_spec(f"topk:{r}").k(d) for r in ("0.01", "0.1", "0.5", "1.0")}
    return sorted(ks_ | {k for k in (1, 2, d - 1) if 1 <= k <= d})


def payloads(nbytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin and native payload buffers holding different garbage."""
    return torch.full((nbytes,), 0x5A, dtype=torch.uint8), torch.full((nbytes,), 0xA5,
                                                                       dtype=torch.uint8)


def states(fusion, d: int, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    s = {n: torch.randn(d, generator=g) for n in fusion.state_names()}
    if "h" in s:  # a few -0.0 and +0.0 entries: the epilogue's signed-zero cases
        s["h"][::7] = -0.0
        s["h"][3::11] = 0.0
    return s, {n: t.clone() for n, t in s.items()}


def assert_states_equal(a: dict, b: dict) -> None:
    for n in a:
        assert torch.equal(a[n].view(torch.int32), b[n].view(torch.int32)), n


# -- elementwise pieces ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp16_bf16_inputs_widen_exactly(dtype):
    """Every fp16 / bf16 bit pattern (inf and nan included) reads as torch's fp32 value
    (K = d: the payload holds r = x.float() in index order)."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    d = x.numel()
    p = torch.empty(kt.body_bytes(d, d), dtype=torch.uint8)
    topk_cpu.encode(False, d, PLAIN, x, {}, p)
    assert torch.equal(p[: 4 * d].view(torch.int32), x.float().view(torch.int32))


def test_scatter_add_matches_twin_and_skips_out_of_range():
    g = torch.Generator().manual_seed(3)
    d = 5000
    idx = torch.randperm(d, generator=g)[:700]
    vals = torch.randn(700, generator=g)
    for scale in (1.0, 0.3):
        want = torch.randn(d, generator=g)
        got = want.clone()
        sparse_torch.scatter_add(want, idx, vals, scale)
        sparse_cpu.scatter_add(got, idx, vals, scale)
        assert torch.equal(got, want)
    acc = torch.zeros(10)
    sparse_cpu.scatter_add(acc, torch.tensor([-1, 3, 10, 2**40]), torch.ones(4), 1.0)
    assert torch.equal(acc, torch.zeros(10).index_fill_(0, torch.tensor([3]), 1.0))


# -- Top-K ----------------------------------------------------------------------------------
def topk_pair(approx, k, fusion, x, state_twin, state_native, scratch=None):
    d = x.numel()
    pt, pn = payloads(from_spec(f"topk:{k}").payload_bytes(d))
    kt.encode(approx, k, fusion, x, state_twin, pt, "torch")
    topk_cpu.encode(approx, k, fusion, x, state_native, pn, scratch)
    return pt, pn


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 2, 3, 31, 32, 33, 1000, 4097, 70001])
def test_topk_matches_twin(kind, d):
    x = make(kind, d)
    scratch = {}  # reused across calls of several K, as a compressor does
    for k in counts(d):
        for approx in (False, True):
            pt, pn = topk_pair(approx, k, PLAIN, x, {}, {}, scratch)
            assert torch.equal(pn, pt), (kind, d, k, approx)


@pytest.mark.parametrize("approx", [False, True], ids=["exact", "approx"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fusion", [PLAIN, *FUSIONS], ids=fusion_id)
def test_topk_fused_step_matches_twin(fusion, dtype, approx):
    for d, ratio in ((4097, "0.1"), (70001, "0.01")):
        k = from_spec(f"topk:{ratio}").k(d)
        st, sn = states(fusion, d)
        for step in range(2):
            x = make("heavy_tail" if step else "random", d, seed=step).to(dtype)
            pt, pn = topk_pair(approx, k, fusion, x, st, sn)
            assert torch.equal(pn, pt), (d, step)
            assert_states_equal(sn, st)


@pytest.mark.parametrize("beta", [0.0, -0.5, 1e-30])
def test_topk_signed_zero_epilogue(beta):
    """``h + c * beta`` where ``0 * beta`` or ``c * beta`` is a signed zero: the cases the
    sparse epilogue must not shortcut."""
    from gradpack.kernels.fusion import Fusion

    d = 2000
    fusion = Fusion(residual="sub", update="add", beta=beta)
    x = make("random", d) * 1e-20
    st, sn = states(fusion, d)
    st["h"][:1000] = -0.0
    sn["h"][:1000] = -0.0
    for approx in (False, True):
        pt, pn = topk_pair(approx, 300, fusion, x, st, sn)
        assert torch.equal(pn, pt)
        assert_states_equal(sn, st)


def signed_zero_case(fusion, d: int):
    """An input and state where ``r`` is ``-0.0`` at every third element (``-0.0 + -0.0`` or
    ``-0.0 - +0.0``), so a selected ``-0.0`` meets the epilogue's ``+ 0.0``."""
    x = make("sparse", d)
    x[::3] = -0.0
    st, sn = states(fusion, d)
    for s in (st, sn):
        if "h" in s:
            s["h"][::3] = -0.0 if fusion.residual == "error" else 0.0
    return x, st, sn


@pytest.mark.parametrize("fusion", FUSIONS[:2], ids=fusion_id)
def test_signed_zero_selections(fusion):
    d = 1000
    for k in (d // 2, d):
        x, st, sn = signed_zero_case(fusion, d)
        for approx in (False, True):
            pt, pn = topk_pair(approx, k, fusion, x, st, sn)
            assert torch.equal(pn, pt), (k, approx)
            assert_states_equal(sn, st)
    for spec in ("randk:0.5:biased", "randk:1.0:biased"):
        x, st, sn = signed_zero_case(fusion, d)
        pt, pn = randk_pair(spec, fusion, x, st, sn, seed=3)
        assert torch.equal(pn, pt), spec
        assert_states_equal(sn, st)


@pytest.mark.parametrize("kind", ["random", "heavy_tail", "sample_biased"])
def test_topk_large(kind):
    x = make(kind, BIG)
    fusion = FUSIONS[2]  # EF21-SGDM
    for approx in (False, True):
        k = from_spec("topk:0.01").k(BIG)
        pt, pn = topk_pair(approx, k, PLAIN, x, {}, {})
        assert torch.equal(pn, pt), approx
        st, sn = states(fusion, BIG)
        pt, pn = topk_pair(approx, k, fusion, x, st, sn)
        assert torch.equal(pn, pt), approx
        assert_states_equal(sn, st)


def topk_rows(d: int, k: int, n: int) -> torch.Tensor:
    c = from_spec(f"topk:{k}", backend="torch")
    return torch.stack([c.encode(make("random", d, seed=i)) for i in range(n)])


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("n", [1, 3])
def test_topk_decode_sum_matches_twin(n, add, out_dtype):
    for d, k in ((1, 1), (4097, 41), (70001, 7000)):
        rows = topk_rows(d, k, n)
        for scale in (1.0, 1 / 3):
            base = torch.randn(d, generator=torch.Generator().manual_seed(9)).to(out_dtype)
            want, got = base.clone(), base.clone()
            kt.decode_sum(k, rows, d, want, scale, add, "torch")
            topk_cpu.decode_sum(k, rows, d, got, scale, add)
            assert torch.equal(got, want), (d, scale)


@pytest.mark.parametrize("corruption", ["out_of_range", "duplicate", "decreasing"])
def test_topk_corrupt_payload_raises_and_writes_nothing(corruption):
    d, k = 1000, 40
    rows = topk_rows(d, k, 3)
    idx, _ = kt.read_payloads(rows, k, d, "topk", unpack_fields)
    bad = idx[1].clone()
    if corruption == "out_of_range":  # 10-bit fields can hold 1000..1023
        bad[-1] = 1020
    elif corruption == "duplicate":
        bad[5] = bad[4]
    else:
        bad[5], bad[6] = bad[6].item(), bad[5].item()
    w = kt.index_width(d)
    pack_words(bad, w, out=rows[1, 4 * k : 4 * k + 4 * words_for(k, w)].view(torch.int32))
    for add in (False, True):
        out = torch.randn(d)
        before = out.clone()
        with pytest.raises(ValueError, match="row 1"):
            topk_cpu.decode_sum(k, rows, d, out, 1.0, add)
        assert torch.equal(out, before)
        with pytest.raises(ValueError, match="row 1"):
            kt.decode_sum(k, rows, d, out, 1.0, add, "torch")


# -- Random-K -------------------------------------------------------------------------------
RANDK_SPECS = ["randk:0.01", "randk:0.1:biased", "randk:0.7", "randk:0.7:biased", "randk:1.0",
               "randk:0.5:qsgd:1:512:inf", "randk:0.1:qsgd:7:64"]


def value_code(spec: str, k: int):
    """``(write(seed), read)`` as compressors/randk.py builds them, on the torch backend."""
    c = from_spec(spec, backend="torch")
    if c.values is None:
        return (lambda seed: None), None
    code = c.values

    def write_for(seed):
        vseed = derive_seed(seed, VALUE_STREAM)

        def write(vals, out):
            code._encode(PLAIN, vals, {}, vseed, out, "torch")
            dec = torch.empty_like(vals)
            code._decode_sum(out[None], vals.numel(), [vseed], dec, 1.0, False, "torch")
            return dec

        return write

    buf = torch.empty(k)

    def read(row, seed):
        code._decode_sum(row[None], k, [derive_seed(seed, VALUE_STREAM)], buf, 1.0, False,
                         "torch")
        return buf

    return write_for, read


@pytest.mark.parametrize("d", [1, 2, 3, 31, 33, 64, 65, 1000, 4097, 70001])
def test_randk_indices_match_twin(d):
    for k in sorted({1, max(1, d // 100), max(1, d // 2), min(d, d // 2 + 1), max(1, d - 1),
                     d}):
        for seed in (0, 7, 2**40 + 3):
            got = randk_cpu.indices(seed, d, k)
            assert got.dtype == torch.int64
            assert torch.equal(got, kr.indices(seed, d, k, "cpu", "torch")), (k, seed)


def randk_pair(spec, fusion, x, st, sn, seed):
    c = from_spec(spec, backend="torch")
    d = x.numel()
    k = c.k(d)
    write_for, _ = value_code(spec, k)
    pt, pn = payloads(c.payload_bytes(d))
    kr.encode(c.unbiased, k, fusion, x, st, seed, pt, "torch", write_for(seed))
    randk_cpu.encode(c.unbiased, k, fusion, x, sn, seed, pn, write_for(seed))
    return pt, pn


@pytest.mark.parametrize("spec", RANDK_SPECS)
@pytest.mark.parametrize("d", [1, 2, 3, 33, 1000, 4097, 70001])
def test_randk_matches_twin(spec, d):
    for seed in (0, 11):
        pt, pn = randk_pair(spec, PLAIN, make("heavy_tail", d, seed), {}, {}, seed)
        assert torch.equal(pn, pt), seed


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fusion", [PLAIN, *FUSIONS], ids=fusion_id)
@pytest.mark.parametrize("spec", ["randk:0.1:biased", "randk:0.7", "randk:0.5:qsgd:1:512:inf"])
def test_randk_fused_step_matches_twin(spec, fusion, dtype):
    d = 4097
    st, sn = states(fusion, d)
    for step in range(2):
        x = make("random", d, seed=step).to(dtype)
        pt, pn = randk_pair(spec, fusion, x, st, sn, seed=step)
        assert torch.equal(pn, pt), step
        assert_states_equal(sn, st)


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("spec", ["randk:0.1", "randk:0.7:biased", "randk:0.1:qsgd:7:64"])
def test_randk_decode_sum_matches_twin(spec, n, add, out_dtype):
    d = 4097
    c = from_spec(spec, backend="torch")
    k = c.k(d)
    seeds = [3 * i + 1 for i in range(n)]
    rows = torch.stack([c.encode(make("random", d, seed=s), seed=s) for s in seeds])
    _, read = value_code(spec, k)
    for scale in (1.0, 0.25 + 2**-20):
        base = torch.randn(d, generator=torch.Generator().manual_seed(5)).to(out_dtype)
        want, got = base.clone(), base.clone()
        kr.decode_sum(k, rows, d, seeds, want, scale, add, "torch", read)
        randk_cpu.decode_sum(k, rows, d, seeds, got, scale, add, read)
        assert torch.equal(got, want), scale


# -- threads ---------------------------------------------------------------------------------
def test_thread_count_changes_nothing():
    """Large inputs (parallel blocks, parts, batches) give the same bits on 1 and 2 threads."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    before = torch.get_num_threads()
    x = make("heavy_tail", BIG)
    ef14, ef21 = FUSIONS[0], FUSIONS[1]
    k = from_spec("topk:0.01").k(BIG)
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = []
            for approx in (False, True):
                s = states(ef14, BIG)[0]
                p = torch.empty(from_spec(f"topk:{k}").payload_bytes(BIG), dtype=torch.uint8)
                topk_cpu.encode(approx, k, ef14, x, s, p)
                out += [p, s["h"]]
            s = states(ef21, BIG)[0]
            p = torch.empty(4 * k, dtype=torch.uint8)
            randk_cpu.encode(False, k, ef21, x, s, 5, p)
            out += [p, s["h"], randk_cpu.indices(9, BIG, BIG - k)]
            acc = torch.zeros(BIG)
            topk_cpu.decode_sum(k, torch.stack([out[0], out[2]]), BIG, acc, 0.5, False)
            out.append(acc)
            results.append(out)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a.numpy().view(np.uint8), b.numpy().view(np.uint8))
