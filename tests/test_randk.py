"""Random-K: the seeded index set (exactly K distinct, uniform marginals, shared across
backends and "ranks"), unbiasedness and omega from theory, the biased variant's
contraction, quantized values (``randk:R:CODE``), Triton equal to the torch twin, fused
steps equal to the unfused reference."""

import math

import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.compressors.randk import VALUE_STREAM
from gradpack.kernels import randk as kr
from gradpack.kernels import randk_torch
from gradpack.kernels.fusion import Fusion
from gradpack.kernels.fusion_torch import epilogue, prologue
from gradpack.kernels.philox import derive_seed


def selected(c, payload, d, seed):
    """Indices a payload decodes onto (its values are never exactly zero here)."""
    return torch.nonzero(c.decode(payload, d, seed=seed)).view(-1)


@pytest.mark.parametrize("d,k", [(2, 1), (10, 3), (10, 5), (10, 6), (10, 9), (1000, 10),
                                 (1000, 999), (4097, 2048), (100_000, 1000)])
def test_indices_exactly_k_distinct_in_range(d, k):
    for seed in (0, 1, 2**62 + 5):
        idx = kr.indices(seed, d, k, "cpu", "torch")
        assert idx.numel() == k and idx.dtype == torch.int64
        assert bool((idx[1:] > idx[:-1]).all()) and 0 <= int(idx[0]) and int(idx[-1]) < d
        assert torch.equal(idx, kr.indices(seed, d, k, "cpu", "torch"))


def test_seeds_differ_and_draw_count_does_not_matter():
    d, k = 5000, 50
    sets = {tuple(kr.indices(s, d, k, "cpu", "torch").tolist()) for s in range(20)}
    assert len(sets) == 20
    # the set is the first k distinct values of the stream, however many draws were made
    stream = randk_torch.draws(7, 10 * k, d)
    long, enough = kr.first_distinct(stream, k)
    short, enough_short = kr.first_distinct(stream[: 2 * k], k)
    assert bool(enough) and bool(enough_short) and torch.equal(long, short)
    seen, order = set(), []  # the definition, element by element
    for v in stream.tolist():
        if v not in seen and len(order) < k:
            seen.add(v)
            order.append(v)
    assert long.tolist() == sorted(order)
    assert not bool(kr.first_distinct(torch.zeros(5, dtype=torch.int64), 2)[1])


def test_too_few_draws_are_extended_on_the_cpu():
    """Should the planned draws hold fewer than m distinct values, the CPU path draws more
    and still returns the same set (the stream is counter-based)."""
    d, k = 1000, 300
    want = kr.indices(3, d, k, "cpu", "torch")
    real = kr.planned_draws
    try:
        kr.planned_draws = lambda m, d: m  # far too few: forces the extension
        assert torch.equal(kr.indices(3, d, k, "cpu", "torch"), want)
    finally:
        kr.planned_draws = real


def test_bounded_is_floor_of_64_bit_product():
    g = torch.Generator().manual_seed(0)
    hi = torch.randint(0, 2**32, (1000,), generator=g)
    lo = torch.randint(0, 2**32, (1000,), generator=g)
    for d in (2, 3, 1000, 2**31 - 1):
        got = randk_torch.bounded(hi, lo, d)
        want = [((h << 32 | low) * d) >> 64 for h, low in zip(hi.tolist(), lo.tolist(),
                                                                strict=True)]
        assert got.tolist() == want


@pytest.mark.parametrize("d,k", [(40, 8), (40, 30)])
def test_marginals_uniform(d, k):
    """Each coordinate is selected with probability K/d: frequencies over N seeds
    within 5 binomial standard errors."""
    n = 1200
    counts = torch.zeros(d)
    for seed in range(n):
        counts[kr.indices(seed, d, k, "cpu", "torch")] += 1
    p = k / d
    se = math.sqrt(p * (1 - p) / n)
    assert float((counts / n - p).abs().max()) <= 5 * se


def _samples(c, x, n):
    d = x.numel()
    return torch.stack([c.decode(c.encode(x, seed=s), d, seed=s) for s in range(n)]).double()


def test_unbiased_and_omega():
    """E C(x) = x within 5 standard errors per coordinate; E||C(x) - x||^2 = omega ||x||^2
    with omega = d/K - 1, within 5 standard errors of the sample mean."""
    d, n = 30, 1000
    x = torch.randn(d, generator=torch.Generator().manual_seed(1))
    c = from_spec("randk:0.2")
    k = c.k(d)
    assert c.unbiased and c.random and c.omega(d) == d / k - 1
    ys = _samples(c, x, n)
    xd = x.double()
    se = xd.abs() * math.sqrt((d / k - 1) / n)
    assert bool(((ys.mean(0) - xd).abs() <= 5 * se + 1e-12).all())
    err = (ys - xd).square().sum(1)
    want = (d / k - 1) * float(xd.square().sum())
    assert abs(float(err.mean()) - want) <= 5 * float(err.std()) / math.sqrt(n)


def test_biased_contraction():
    d, n = 30, 800
    x = torch.randn(d, generator=torch.Generator().manual_seed(2))
    c = from_spec("randk:6:biased")
    assert not c.unbiased and c.alpha(d) == 6 / d
    with pytest.raises(ValueError, match="omega"):
        c.omega(d)
    ys = _samples(c, x, n)
    xd = x.double()
    err = (ys - xd).square().sum(1)
    want = (1 - 6 / d) * float(xd.square().sum())
    assert abs(float(err.mean()) - want) <= 5 * float(err.std()) / math.sqrt(n)
    # every sample keeps exactly K coordinates of x unscaled
    nz = ys != 0
    assert bool((nz.sum(1) == 6).all()) and torch.equal(ys[nz], xd.expand(n, d)[nz])


def test_sizes_and_specs():
    c = from_spec("randk:0.01")
    assert c.wire_bits(10_000) == 32 * 100
    assert c.payload_bytes(10_000) == 400
    assert c.wire_bits(1) == 32
    assert from_spec("randk:3:biased").spec == "randk:3:biased"
    for bad in ["randk", "randk:0", "randk:2.0", "randk:0.1:unbiased", "randk:0.1:biased:x"]:
        with pytest.raises(ValueError):
            from_spec(bad)


CODED = "randk:0.5:qsgd:1:64:inf"


def test_coded_values_sizes_and_specs():
    """``randk:R:CODE``: the K values travel in CODE, so the wire is CODE's bits for K."""
    c = from_spec(CODED)
    assert c.spec == CODED and from_spec(c.spec).spec == CODED
    assert c.k(1000) == 500 and c.wire_bits(1000) == from_spec("qsgd:1:64:inf").wire_bits(500)
    assert c.wire_bits(1000) == 500 * 2 + 8 * 32
    assert c.encode(torch.randn(1000)).numel() == c.payload_bytes(1000)
    q = from_spec("qsgd:1:64:inf")
    assert c.omega(1000) == (1 + q.omega(500)) * 2 - 1
    assert from_spec("randk:0.5:identity").omega(1000) == 1.0
    for bad, match in [("randk:0.5:sign", "unbiased"), ("randk:0.5:fp16", "unbiased"),
                       ("randk:0.5:topk:0.1", "elementwise"), ("randk:0.5:", "randk:R"),
                       ("randk:0.5:qsgd", "qsgd:S"), ("randk:0.5:nope", "unknown")]:
        with pytest.raises(ValueError, match=match):
            from_spec(bad)


def test_coded_values_unbiased_and_omega():
    """The composition is unbiased (5 standard errors per coordinate) and its error stays
    below omega = (1 + omega_Q(K)) d/K - 1 (within 5 standard errors); at most K
    coordinates are ever nonzero.

    Standard errors come from the theory, not the sample (a rarely nonzero coordinate can
    have sample std 0): y_i is 0 or the ternary code of v_i = x_i d/K, which is +-n_b with
    probability |v_i| / n_b, so E[y_i^2] = (K/d) n_b |v_i| <= (d/K) max|x| |x_i|."""
    d, n = 64, 3000
    x = torch.randn(d, generator=torch.Generator().manual_seed(4))
    c = from_spec("randk:0.5:qsgd:1:32:inf")
    ys = _samples(c, x, n)
    xd = x.double()
    se = (d / c.k(d) * xd.abs().max() * xd.abs() / n).sqrt()
    assert bool(((ys.mean(0) - xd).abs() <= 5 * se + 1e-12).all())
    err = (ys - xd).square().sum(1)
    bound = c.omega(d) * float(xd.square().sum())
    assert float(err.mean()) <= bound + 5 * float(err.std()) / math.sqrt(n)
    assert bool((ys.ne(0).sum(1) <= c.k(d)).all())


def test_coded_values_decode_is_plain_randk_of_the_decoded_code():
    """Decoding = scatter the CODE-decoded K values at the seed's indices."""
    d = 300
    c = from_spec("randk:0.3:qsgd:3:16:inf")
    x = torch.randn(d, generator=torch.Generator().manual_seed(8))
    p = c.encode(x, seed=5)
    k = c.k(d)
    vals = from_spec("qsgd:3:16:inf").decode(p, k, seed=derive_seed(5, VALUE_STREAM))
    want = torch.zeros(d)
    want[kr.indices(5, d, k, "cpu", "torch")] = vals
    assert torch.equal(c.decode(p, d, seed=5), want)


def test_same_seed_on_every_rank_decodes():
    """Encode on one "rank", decode-and-sum on another with each row's seed."""
    d = 500
    c = from_spec("randk:0.04")
    xs = [torch.randn(d, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    seeds = [11, 12, 13]
    ps = torch.stack([c.encode(x, seed=s) for x, s in zip(xs, seeds, strict=True)])
    want = torch.zeros(d)
    for p, s in zip(ps, seeds, strict=True):
        want = want + c.decode(p, d, seed=s)
    assert torch.equal(c.decode_sum(ps, d, seeds=seeds), want)
    assert not torch.equal(selected(c, ps[0], d, 11), selected(c, ps[0], d, 12))
    with pytest.raises(ValueError, match="bytes"):
        c.decode(ps[0][:-8], d, seed=11)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_noncontiguous(dtype):
    c = from_spec("randk:0.1")
    x = torch.randn(600, 2, generator=torch.Generator().manual_seed(3)).to(dtype)[:, 0]
    assert not x.is_contiguous()
    assert torch.equal(c.encode(x, seed=4), c.encode(x.contiguous().float(), seed=4))


FUSIONS = [
    Fusion(residual="error", gamma=0.5, update="error"),
    Fusion(residual="sub", update="add"),
    Fusion(momentum=1, eta=0.25, residual="sub", update="add", beta=0.75),
]


def _state(fusion, d, seed):
    g = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(d, generator=g) for name in fusion.state_names()}
    state["h"][::5] = -0.0
    return state


def _reference_step(c, fusion, grad, state, seed):
    r = prologue(fusion, grad, state, write=True)
    payload = c.encode(r, seed=seed)
    epilogue(fusion, r, c.decode(payload, r.numel(), seed=seed), state)
    return payload


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"{f.residual}-{f.update}-m{f.momentum}")
@pytest.mark.parametrize("spec", ["randk:0.1", "randk:0.1:biased", "randk:0.3:qsgd:1:64:inf"])
def test_fused_step_equals_reference(spec, fusion):
    d = 1000
    c = from_spec(spec, backend="torch")
    grad = torch.randn(d, generator=torch.Generator().manual_seed(5))
    grad[::7] = -0.0
    s_ref, s_fused = _state(fusion, d, 1), _state(fusion, d, 1)
    want = _reference_step(c, fusion, grad, s_ref, seed=9)
    assert torch.equal(c.step(fusion, grad, s_fused, seed=9), want)
    for name in s_ref:
        assert torch.equal(s_fused[name].view(torch.int32), s_ref[name].view(torch.int32))


@pytest.mark.triton
@pytest.mark.parametrize("spec,d", [("randk:0.05", 3000), ("randk:0.7:biased", 500),
                                    ("randk:1", 1), ("randk:1.0", 64),
                                    ("randk:0.5:qsgd:1:64:inf", 3000), ("randk:0.2:ssign", 700)])
def test_triton_matches_torch(tdevice, spec, d):
    x = torch.randn(d, generator=torch.Generator().manual_seed(6))
    t, ref = from_spec(spec, backend="triton"), from_spec(spec, backend="torch")
    want = ref.encode(x, seed=21)
    got = t.encode(x.to(tdevice), seed=21)
    assert torch.equal(got.cpu(), want)
    out = torch.linspace(-1, 1, d)
    ps = torch.stack([want, want])
    got_sum = t.decode_sum(ps.to(tdevice), d, seeds=[21, 22], out=out.clone().to(tdevice),
                           scale=0.5, add=True)
    assert torch.equal(got_sum.cpu(), ref.decode_sum(ps, d, seeds=[21, 22], out=out.clone(),
                                                     scale=0.5, add=True))


@pytest.mark.triton
@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"{f.residual}-{f.update}-m{f.momentum}")
@pytest.mark.parametrize("spec", ["randk:0.1", "randk:0.3:qsgd:1:64:inf"])
def test_fused_step_triton_equals_reference(tdevice, fusion, spec):
    d = 1200
    c, ref = from_spec(spec, backend="triton"), from_spec(spec, backend="torch")
    grad = torch.randn(d, generator=torch.Generator().manual_seed(7))
    grad[::7] = -0.0
    s_ref = _state(fusion, d, 3)
    s_fused = {k: v.to(tdevice) for k, v in _state(fusion, d, 3).items()}
    want = _reference_step(ref, fusion, grad, s_ref, seed=5)
    assert torch.equal(c.step(fusion, grad.to(tdevice), s_fused, seed=5).cpu(), want)
    for name in s_ref:
        assert torch.equal(s_fused[name].cpu().view(torch.int32), s_ref[name].view(torch.int32))
