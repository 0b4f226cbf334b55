"""Top-K: exact selection against a numpy reference (ties by lowest index), the threshold
mode's guarantees, Triton equal to the torch twin bit for bit, fused error-feedback steps
equal to the unfused reference, sizes, dtypes and layouts."""

import math

import numpy as np
import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.kernels import topk as kt
from gradpack.kernels.bitpack_torch import unpack_fields
from gradpack.kernels.fusion import Fusion
from gradpack.kernels.fusion_torch import epilogue, prologue
from gradpack.kernels.sparse import key_image

KINDS = ["random", "ties", "all_equal", "all_zero", "sparse", "heavy_tail", "one_bin",
         "sample_biased"]


def make(kind: str, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7919 + d)
    if kind == "random":
        return torch.randn(d, generator=g)
    if kind == "ties":  # few distinct magnitudes, both signs
        return torch.randint(-3, 4, (d,), generator=g).float() * 0.5
    if kind == "all_equal":
        return torch.full((d,), -1.25)
    if kind == "all_zero":
        return torch.zeros(d)
    if kind == "sparse":
        x = torch.zeros(d)
        nnz = max(1, d // 50)
        x[torch.randperm(d, generator=g)[:nnz]] = torch.randn(nnz, generator=g)
        return x
    if kind == "heavy_tail":
        return torch.randn(d, generator=g) * torch.exp(3 * torch.randn(d, generator=g))
    if kind == "one_bin":  # magnitudes differing only in the low mantissa bits
        return (1.0 + torch.randperm(d, generator=g).float() * 2.0**-23) * torch.sign(
            torch.randn(d, generator=g))
    if kind == "sample_biased":  # large on even indices, which a stride-2 sample sees only
        x = 1e-3 * torch.randn(d, generator=g)
        x[::2] = torch.randn((d + 1) // 2, generator=g)
        return x
    raise ValueError(kind)


def reference_topk(x: torch.Tensor, k: int) -> np.ndarray:
    """Ascending indices of the k largest |x|, ties by the lowest index (stable argsort)."""
    a = np.abs(x.float().numpy())
    order = np.argsort(-a, kind="stable")
    return np.sort(order[:k])


def dense(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    y = torch.zeros(x.numel())
    y[idx] = x.float()[idx]
    return y


def payload_indices(c, payload, d):
    k = c.k(d)
    idx, vals = kt.read_payloads(payload[None], k, d, c.spec, unpack_fields)
    return idx[0].numpy(), vals[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 2, 3, 31, 32, 33, 1000, 4097, 70001])
def test_exact_matches_reference(kind, d):
    x = make(kind, d)
    for k in sorted({1, 2, max(1, d // 100), d // 3 or 1, max(1, d - 1), d}):
        c = from_spec(f"topk:{k}", backend="torch")
        p = c.encode(x)
        assert p.numel() == c.payload_bytes(d)
        want = reference_topk(x, k)
        idx, vals = payload_indices(c, p, d)
        assert np.array_equal(idx, want), (kind, d, k)
        assert torch.equal(vals, x[want])
        assert torch.equal(c.decode(p, d), dense(x, want))


@pytest.mark.parametrize("ratio,d,k", [(0.01, 1000, 10), (0.0149, 100, 1), (0.5, 3, 2),
                                       (1.0, 17, 17), (1e-9, 10, 1), (0.3, 10, 3)])
def test_ratio_to_k(ratio, d, k):
    c = from_spec(f"topk:{ratio!r}")
    assert c.k(d) == k
    assert c.wire_bits(d) == 32 * k + k * math.ceil(math.log2(d)) if d > 1 else 32 * k
    assert c.alpha(d) == k / d


def test_sizes_and_specs():
    c = from_spec("topk:5")
    assert c.wire_bits(1) == 32  # K = 1, no index bits
    assert c.wire_bits(1024) == 5 * (32 + 10)
    assert c.wire_bits(1025) == 5 * (32 + 11)
    assert c.payload_bytes(1025) == 8 * math.ceil(5 * 43 / 64)
    assert from_spec("topk:0.25:approx").spec == "topk:0.25:approx"
    assert from_spec("topk:7").spec == "topk:7"
    assert not c.unbiased and not c.random
    for bad in ["topk", "topk:0", "topk:1.5", "topk:-0.1", "topk:0.1:exact", "topk:x",
                "topk:nan", "topk:0.1:approx:1"]:
        with pytest.raises(ValueError):
            from_spec(bad)
    with pytest.raises(ValueError, match="omega"):
        c.omega(10)


def test_pickle_drops_work_buffers():
    import pickle

    c = from_spec("topk:0.01")
    x = make("random", 50_000)
    p = c.encode(x)
    assert c._scratch  # the torch path keeps its buffers between calls
    c2 = pickle.loads(pickle.dumps(c))
    assert c2._scratch == {} and c2.spec == c.spec and torch.equal(c2.encode(x), p)


def test_payload_is_deterministic_and_padded():
    x = make("random", 1000)
    c = from_spec("topk:0.013")
    p = c.encode(x)
    assert torch.equal(p, c.encode(x.clone()))
    assert not p[kt.body_bytes(c.k(1000), 1000):].any()


@pytest.mark.parametrize("kind", ["random", "heavy_tail", "ties", "sparse", "all_equal",
                                  "one_bin"])
@pytest.mark.parametrize("d,ratio", [(1000, 0.05), (300_000, 0.01), (300_000, 0.001)])
def test_approx_contraction(kind, d, ratio):
    """Threshold mode: K distinct entries holding x's values, never better than exact,
    and within the contraction bound (1 - K/d)||x||^2 it guarantees."""
    x = make(kind, d, seed=1)
    approx = from_spec(f"topk:{ratio}:approx")
    exact = from_spec(f"topk:{ratio}")
    k = approx.k(d)
    p = approx.encode(x)
    idx, vals = payload_indices(approx, p, d)
    assert idx.size == k and torch.equal(vals, x[idx])
    norm2 = float(x.double().square().sum())
    err_approx = float((approx.decode(p, d).double() - x.double()).square().sum())
    err_exact = float((exact.decode(exact.encode(x), d).double() - x.double()).square().sum())
    assert err_exact <= (1 - k / d) * norm2 * (1 + 1e-9) + 1e-30
    assert err_exact <= err_approx * (1 + 1e-12) + 1e-30
    assert err_approx <= (1 - k / d) * norm2 * (1 + 1e-9) + 1e-30


def test_approx_is_exact_on_small_continuous_inputs():
    """With d <= SAMPLE the sample is all of x, the thresholds are exact quantiles."""
    for d in (50, 1000, 5000):
        x = make("random", d, seed=2)
        a, e = from_spec("topk:0.02:approx"), from_spec("topk:0.02")
        assert torch.equal(a.encode(x), e.encode(x))


def test_approx_plan_band_bound():
    """A band plan is used only when counts prove the contraction; ties fall back."""
    d, k = 10_000, 100
    one, two = int(key_image(torch.tensor([1.0]))), int(key_image(torch.tensor([2.0])))
    # 90 elements >= 2.0, 110 >= 1.0: 10 band slots out of 20, proven (the rest is small)
    assert kt.approx_plan([two, one], [90, 110], d, k) == (two - 1, one, 10)
    # no sure elements above the first threshold: cannot bound what is left out
    assert kt.approx_plan([one], [200], d, k) is None
    assert kt.approx_plan([one], [100], d, k) == (one - 1, one, 0)
    assert kt.approx_plan([two, one], [10, 20], d, k) is None


# -- hostile payloads -------------------------------------------------------------------------
def _corrupt(c, d, fields):
    """A well-formed-length payload whose index fields are ``fields``."""
    x = make("random", d)
    p = c.encode(x).clone()
    k, w = c.k(d), kt.index_width(d)
    from gradpack.kernels.bitpack import words_for
    from gradpack.kernels.bitpack_torch import pack_words

    nw = words_for(k, w)
    pack_words(torch.tensor(fields), w, out=p[4 * k : 4 * (k + nw)].view(torch.int32))
    return p


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hostile_payloads(backend, request):
    if backend == "triton":
        request.getfixturevalue("tdevice")
    d = 100  # 7-bit fields: values 100..127 fit in the bit pattern
    c = from_spec("topk:4", backend=backend)
    out = torch.full((d,), 3.0)
    cases = {
        "index >= d": [1, 5, 9, 127],
        "index == d": [0, 1, 2, 100],
        "repeated index": [3, 3, 4, 5],
        "decreasing": [9, 5, 2, 1],
    }
    for what, fields in cases.items():
        p = _corrupt(c, d, fields)
        with pytest.raises(ValueError, match="corrupt"):
            c.decode(p, d, out=out, add=True)
        with pytest.raises(ValueError, match="corrupt"):
            c.decode_sum(torch.stack([c.encode(make("random", d)), p]), d, out=out)
        assert torch.equal(out, torch.full((d,), 3.0)), what
    good = c.encode(make("random", d))
    with pytest.raises(ValueError, match="bytes"):
        c.decode(good[:-8], d)
    with pytest.raises(ValueError, match="bytes"):
        c.decode(torch.cat([good, torch.zeros(8, dtype=torch.uint8)]), d)
    with pytest.raises(ValueError, match="uint8"):
        c.decode(good.view(torch.int32), d)
    with pytest.raises(ValueError, match="uint8"):
        c.decode(good.float(), d)


# -- decode-and-sum, dtypes, layouts -------------------------------------------------------------
def test_decode_sum_in_row_order():
    d = 777
    c = from_spec("topk:0.1")
    xs = [make("random", d, seed=s) for s in range(4)]
    ps = torch.stack([c.encode(x) for x in xs])
    scale = 0.3
    acc = torch.linspace(-1, 1, d)
    want = acc.clone()
    for p in ps:
        want = want + c.decode(p, d) * torch.tensor(scale)
    got = c.decode_sum(ps, d, out=acc.clone(), scale=scale, add=True)
    assert torch.equal(got, want)
    half = c.decode_sum(ps, d, dtype=torch.float16)
    assert half.dtype == torch.float16
    assert torch.equal(half, c.decode_sum(ps, d).half())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_noncontiguous(dtype):
    c = from_spec("topk:0.05")
    base = make("random", 2 * 999).reshape(999, 2)
    x = base.to(dtype)[:, 1]  # non-contiguous, low precision
    assert not x.is_contiguous()
    p = c.encode(x)
    assert torch.equal(p, c.encode(x.contiguous().float()))
    assert torch.equal(c.decode(p, 999), dense(x.float(), reference_topk(x.float(), c.k(999))))


def test_non_finite_input_rejected():
    c = from_spec("topk:3")
    x = make("random", 50)
    x[7] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        c.encode(x)


# -- fused error-feedback steps -------------------------------------------------------------------
FUSIONS = [
    Fusion(residual="error", gamma=0.5, update="error"),  # EF14
    Fusion(residual="sub", update="add"),  # EF21
    Fusion(momentum=1, eta=0.25, residual="sub", update="add", beta=0.75),  # EF21-SGDM
    Fusion(momentum=2, eta=0.5, residual="none", update="none"),
]


def _state(fusion, d, seed):
    g = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(d, generator=g) for name in fusion.state_names()}
    if "h" in state:
        state["h"][::5] = -0.0  # the epilogue must keep the -0.0 semantics of the reference
    return state


def reference_step(c, fusion, grad, state, seed=0):
    """Unfused: prologue, encode, decode, epilogue."""
    r = prologue(fusion, grad, state, write=True)
    payload = c.encode(r, seed=seed)
    epilogue(fusion, r, c.decode(payload, r.numel(), seed=seed), state)
    return payload


def assert_bits_equal(a, b):
    assert torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                       b.view(torch.int32) if b.dtype == torch.float32 else b)


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"{f.residual}-{f.update}-m{f.momentum}")
@pytest.mark.parametrize("spec", ["topk:0.1", "topk:0.1:approx"])
def test_fused_step_equals_reference_torch(spec, fusion):
    d = 2000
    c = from_spec(spec, backend="torch")
    grad = make("random", d, seed=3)
    grad[::7] = -0.0
    s_ref, s_fused = _state(fusion, d, 1), _state(fusion, d, 1)
    want = reference_step(c, fusion, grad, s_ref)
    got = c.step(fusion, grad, s_fused)
    assert torch.equal(got, want)
    for name in s_ref:
        assert_bits_equal(s_fused[name], s_ref[name])


@pytest.mark.triton
@pytest.mark.parametrize("fusion", FUSIONS[:3], ids=lambda f: f"{f.residual}-{f.update}")
def test_fused_step_triton_equals_reference(tdevice, fusion):
    d = 1500
    c = from_spec("topk:0.1", backend="triton")
    ref = from_spec("topk:0.1", backend="torch")
    grad = make("random", d, seed=4)
    grad[::7] = -0.0
    s_ref = _state(fusion, d, 2)
    s_fused = {k: v.to(tdevice) for k, v in _state(fusion, d, 2).items()}
    want = reference_step(ref, fusion, grad, s_ref)
    got = c.step(fusion, grad.to(tdevice), s_fused)
    assert torch.equal(got.cpu(), want)
    for name in s_ref:
        assert_bits_equal(s_fused[name].cpu(), s_ref[name])


# -- Triton twin -------------------------------------------------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize("spec", ["topk:0.05", "topk:0.05:approx", "topk:1", "topk:1.0"])
@pytest.mark.parametrize("kind,d", [("random", 3000), ("ties", 2500), ("one_bin", 1500),
                                    ("all_zero", 33), ("random", 1)])
def test_triton_matches_torch(tdevice, spec, kind, d):
    x = make(kind, d, seed=5)
    want = from_spec(spec, backend="torch").encode(x)
    c = from_spec(spec, backend="triton")
    got = c.encode(x.to(tdevice))
    assert torch.equal(got.cpu(), want)
    assert torch.equal(c.decode(got, d).cpu(), from_spec(spec, backend="torch").decode(want, d))


@pytest.mark.triton
def test_triton_radix_early_exit(tdevice):
    """K entries alone in one first-digit bin: the radix select stops after one pass."""
    d, k = 1500, 75
    x = torch.zeros(d)
    x[torch.randperm(d, generator=torch.Generator().manual_seed(8))[:k]] = (
        1.0 + torch.arange(k) * 2.0**-20)
    from gradpack.kernels import topk_triton as tt

    lo = int(key_image(torch.tensor([1.0])))
    plan = tt._exact_plan(x.to(tdevice), k, torch.zeros(6, dtype=torch.int64, device=tdevice))
    assert plan[tt.TOP : tt.NEED + 1].tolist() == [lo - 1, lo, 0]
    assert int(plan[tt.PREFIX]) == lo >> 20  # stopped after the first (11-bit) digit
    want = from_spec(f"topk:{k}", backend="torch").encode(x)
    assert torch.equal(from_spec(f"topk:{k}", backend="triton").encode(x.to(tdevice)).cpu(), want)


@pytest.mark.triton
def test_triton_approx_band_plan(tdevice):
    """A threshold plan that really fills a band (stride > 1), on both backends."""
    d = 70_000
    x = make("heavy_tail", d, seed=6)
    r = x.to(tdevice)
    from gradpack.kernels.topk_triton import _approx_plan

    plan = _approx_plan(r, 700)
    assert plan is not None and plan[2] > 0  # a real band, filled by index
    want = from_spec("topk:700:approx", backend="torch").encode(x)
    got = from_spec("topk:700:approx", backend="triton").encode(r)
    assert torch.equal(got.cpu(), want)


@pytest.mark.triton
def test_triton_decode_sum_matches_torch(tdevice):
    d = 1000
    c, t = from_spec("topk:0.02", backend="torch"), from_spec("topk:0.02", backend="triton")
    ps = torch.stack([c.encode(make("random", d, seed=s)) for s in range(3)])
    out = torch.linspace(-2, 2, d)
    want = c.decode_sum(ps, d, out=out.clone(), scale=0.7, add=True)
    got = t.decode_sum(ps.to(tdevice), d, out=out.clone().to(tdevice), scale=0.7, add=True)
    assert torch.equal(got.cpu(), want)


@pytest.mark.triton
def test_triton_scatter_never_writes_out_of_bounds(tdevice):
    """Defence in depth below the validation: the store is masked to [0, d)."""
    from gradpack.kernels.sparse_triton import scatter_add

    guard = torch.full((30,), 7.0, device=tdevice)
    acc = guard[10:20]  # d = 10 inside a larger buffer
    acc.zero_()
    idx = torch.tensor([-1, 3, 10, 2**40], device=tdevice)
    scatter_add(acc, idx, torch.ones(4, device=tdevice), 1.0)
    assert guard[:10].eq(7).all() and guard[20:].eq(7).all()
    assert acc.cpu().tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
