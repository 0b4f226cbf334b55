"""Overflow-safe headers (issue 14): finite input never turns into an inf or nan header.

A sum of squares overflows fp32 once an element reaches about 1.8e19, and sign's sum of
``|r|`` can overflow although the mean fits; every backend therefore also sums the terms
scaled by a power of two (``kernels/format.py``, "Overflow") and uses that sum where the
plain one is inf. What is checked here, on every backend against the torch twin (bytes and
fused state bit for bit):

- the headers of huge finite inputs are finite and equal the true value (fp64) within the
  rounding bound derived from the fixed-order tree (:func:`_sum_bound`);
- scaling an input by ``2**k`` scales its headers and decoded values by exactly ``2**k`` and
  leaves the codes alone (power-of-two scaling is exact), so unbiasedness carries over;
  the mean over seeds is also checked against the theory;
- where the true value does not fit fp32 (a 2-norm above 3.4e38, a Random-K value times
  d/K) the step raises :class:`~gradpack.errors.RangeError` and writes nothing: ``out``
  and every state tensor are unchanged.

Inputs stay small: the Triton kernels run under the interpreter.
"""

import math
from dataclasses import replace

import pytest
import torch

from gradpack.compressors import from_spec
from gradpack.compressors.faults import Faults
from gradpack.errors import NonFiniteError, RangeError
from gradpack.kernels import elementwise_torch
from gradpack.kernels.format import FP32_MAX, PREV_MAX, Format, Kind, qsgd_format
from gradpack.kernels.fusion import PLAIN, Fusion
from gradpack.kernels.treesum import CHUNK
from tests.backends import device_for

# the plain sums overflow on purpose: numpy (the Triton interpreter) says so
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
U = 2.0**-24  # fp32's unit roundoff
INF = float("inf")
BF16_MAX = torch.finfo(torch.bfloat16).max
FP16_MAX = torch.finfo(torch.float16).max


def _x(d, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(1000 * seed + d)
    return torch.randn(d, generator=g) * scale


def _mixed(d, seed=0):
    """Small values (1e-15: their squares do not underflow) with five huge ones (up to 1e25:
    theirs overflow), each next to a near-subnormal one (1e-38)."""
    x = _x(d, 1e-15, seed)
    at = torch.arange(5) * (d // 5)
    x[at] = torch.tensor([1e25, -3e24, 7e23, -1e25, 2e20])
    x[at + 1] = 1e-38
    return x


# -- the derived rounding bounds -------------------------------------------------------------
def _depth(m: int) -> int:
    """Additions on the way from a term to its segment's sum (``kernels/treesum.py``)."""
    if m <= CHUNK:
        return max(0, math.ceil(math.log2(m)))
    return 10 + _depth(-(-m // CHUNK))


def _sum_bound(m: int, rounded_terms: bool) -> float:
    """Relative error of a fixed-order sum of ``m`` non-negative terms: each term passes
    through ``_depth(m)`` additions (one rounding each), plus one for the term itself
    (a square) where ``rounded_terms``: ``(1 + u)**k - 1``."""
    return (1 + U) ** (_depth(m) + rounded_terms) - 1


def _true_headers(fmt, x: torch.Tensor) -> torch.Tensor:
    """The header each segment should carry, in fp64."""
    r = x.double()
    d = r.numel()
    seg = fmt.segment(d)
    rows = [r[i : i + seg] for i in range(0, d, seg)]
    if fmt.kind == Kind.SIGN:
        return (r.abs().sum() / d).reshape(1)
    if fmt.maxnorm:
        return torch.stack([row.abs().max() for row in rows])
    return torch.stack([row.norm() for row in rows])


def _bound(fmt, d: int) -> float:
    """Relative error of the header, from :func:`_sum_bound`: the sum, then one correctly
    rounded division (sign) or square root (half the sum's error, plus one rounding)."""
    if fmt.maxnorm:
        return 0.0  # a maximum is exact
    if fmt.kind == Kind.SIGN:
        return (1 + _sum_bound(d, False)) * (1 + U) - 1
    return _sum_bound(fmt.segment(d), True) / 2 + U


def _headers(c, payload, d) -> torch.Tensor:
    fmt = c.format(d)
    return payload[: 4 * fmt.header_words(d)].view(torch.float32)


def _pair(spec, backend, **kw):
    return from_spec(spec, backend=backend, **kw), from_spec(spec, backend="torch", **kw)


# -- headers of huge finite inputs -----------------------------------------------------------
CASES = {  # name: (specs, input)
    "issue": (["qsgd:15", "ssign", "sign", "qsgd:15:512:inf"],
              lambda: torch.tensor([1e20, 1.0, -3.0, 0.5])),
    "all-huge": (["sign", "qsgd:3:1", "qsgd:1:2:inf"], lambda: torch.full((9,), 3e38)),
    "norm-fits": (["ssign", "qsgd:7", "qsgd:255:16", "sign", "qsgd:1:16:inf"],
                  lambda: torch.full((16,), 8e37) * torch.tensor([1.0, -1.0]).repeat(8)),
    "mixed": (["ssign", "qsgd:7:100", "qsgd:1:64:inf", "sign"], lambda: _mixed(3000)),
    "gaussian-1e19": (["ssign", "qsgd:4", "sign"], lambda: _x(1500, 1e19)),
    "bf16-max": (["sign", "qsgd:15:1", "qsgd:2:8:inf"],
                 lambda: torch.full((40,), BF16_MAX, dtype=torch.bfloat16)),
    "fp16-max": (["sign", "ssign", "qsgd:7:8", "qsgd:7:8:inf"],
                 lambda: torch.full((40,), FP16_MAX, dtype=torch.float16)),
}
HEADER_CASES = [(name, spec) for name, (specs, _) in CASES.items() for spec in specs]


@pytest.mark.parametrize("name,spec", HEADER_CASES, ids=[f"{n}-{s}" for n, s in HEADER_CASES])
def test_huge_inputs_give_true_headers_on_every_backend(kernel_backend, name, spec):
    backend, device = kernel_backend
    x = CASES[name][1]()
    d = x.numel()
    ct, cr = _pair(spec, backend)
    want = cr.encode(x, seed=5)
    got = ct.encode(x.to(device), seed=5)
    assert torch.equal(got.cpu(), want)
    fmt = cr.format(d)
    head = _headers(cr, want, d).double()
    truth = _true_headers(fmt, x)
    assert torch.isfinite(head).all(), head
    bound = _bound(fmt, d)
    assert ((head - truth).abs() <= bound * truth).all(), (head, truth, bound)
    y = cr.decode(want, d, seed=5)
    assert torch.isfinite(y).all()
    assert torch.equal(ct.decode(got, d, seed=5).cpu(), y)


def test_the_issue_example_is_its_norm():
    """``qsgd:15`` of ``[1e20, 1, -3, .5]``: the header is 1e20 (it was inf)."""
    x = torch.tensor([1e20, 1.0, -3.0, 0.5])
    for backend in ("torch", "cpu"):
        payload = from_spec("qsgd:15", backend=backend).encode(x)
        assert payload[:4].view(torch.float32).item() == torch.tensor(1e20).item()


def test_sign_mean_is_exact_where_it_should_be():
    """Eight copies of 3e38: their sum overflows, the rescue sum of ``|r| 2**-32`` (equal
    terms, a power-of-two tree: exact) divided by 8 gives 3e38 exactly."""
    x = torch.full((8,), 3e38)
    for backend in ("torch", "cpu"):
        payload = from_spec("sign", backend=backend).encode(x)
        assert payload[:4].view(torch.float32).item() == x[0].item()


# -- power-of-two scaling is exact -----------------------------------------------------------
SCALED_SPECS = ["sign", "ssign", "qsgd:7", "qsgd:3:64", "qsgd:1:1", "qsgd:15:64:inf",
                "qsgd:1:100:inf"]


def _exponents(c, x) -> list[int]:
    """2**k factors for ``x``: one where the plain sums of squares overflow, and the two
    that put the largest header in ``[2**125, 2**126)`` and ``[2**126, 2**127)``, where the
    quantizer scales by ``HUGE_SCALE`` (``S / n_b`` alone would be subnormal for small
    ``S``), as far as the largest ``|x_i| 2**k`` stays finite."""
    head = _headers(c, c.encode(x, seed=0), x.numel())
    top = math.frexp(float(head.max()))[1]  # head.max() < 2**top
    most = 127 - math.frexp(float(x.abs().max()))[1]  # |x| 2**most < 2**127
    return sorted({70, min(126 - top, most), min(127 - top, most)})


@pytest.mark.parametrize("spec", SCALED_SPECS)
def test_scaling_by_a_power_of_two_scales_the_code_exactly(kernel_backend, spec):
    backend, device = kernel_backend
    ct, cr = _pair(spec, backend)
    x = _x(300, 0.5)
    d = x.numel()
    fmt = cr.format(d)
    nh = fmt.header_words(d)
    base = cr.encode(x, seed=9)
    for k in _exponents(cr, x):
        y = x * 2.0**k
        want = cr.encode(y, seed=9)
        assert torch.equal(ct.encode(y.to(device), seed=9).cpu(), want)
        assert torch.equal(want[4 * nh :], base[4 * nh :]), f"2**{k}: the codes changed"
        assert torch.equal(_headers(cr, want, d), _headers(cr, base, d) * 2.0**k)
        assert torch.equal(cr.decode(want, d, seed=9), cr.decode(base, d, seed=9) * 2.0**k)


@pytest.mark.parametrize("spec", ["qsgd:3:64", "ssign", "qsgd:1:32:inf"])
def test_huge_inputs_stay_unbiased(spec):
    """Mean over ``n`` seeds of ``C(x 2**100)`` is ``x 2**100`` within 5 standard errors per
    coordinate: variance ``(n_b / S)**2 p (1 - p) <= (n_b / S)**2 / 4`` (QSGD), ``n**2 - x_i**2``
    (ssign)."""
    c = from_spec(spec, backend="torch")
    x = _x(64, 0.5, seed=3) * 2.0**100
    d, n = x.numel(), 400
    fmt = c.format(d)
    head = _headers(c, c.encode(x, seed=0), d).double()
    if fmt.kind == Kind.SSIGN:
        var = head[0] ** 2 - x.double() ** 2
    else:
        var = (head.repeat_interleave(fmt.bucket)[:d] / fmt.levels) ** 2 / 4
    mean = torch.stack([c.decode(c.encode(x, seed=s), d, seed=s).double()
                        for s in range(n)]).mean(0)
    assert ((mean - x.double()).abs() <= 5 * (var / n).sqrt() + 1e-300).all()


# -- maxnorm at FP32_MAX: the top level stays finite -----------------------------------------
@pytest.mark.parametrize("spec", ["qsgd:25:4:inf", "qsgd:25:4", "qsgd:100:1"])
def test_a_norm_of_fp32_max_keeps_every_level_finite(kernel_backend, spec):
    """``25 * (FP32_MAX / 25)`` overflows: the header is lowered one ulp (to ``PREV_MAX``)."""
    backend, device = kernel_backend
    ct, cr = _pair(spec, backend)
    x = torch.tensor([FP32_MAX, 0.0, -1.0, 0.0, FP32_MAX / 2])
    want = cr.encode(x, seed=1)
    assert torch.equal(ct.encode(x.to(device), seed=1).cpu(), want)
    assert _headers(cr, want, 5)[0].item() == PREV_MAX
    y = cr.decode(want, 5, seed=1)
    assert torch.isfinite(y).all() and y[0].item() > 0.99 * FP32_MAX


@pytest.mark.parametrize("fmt", [qsgd_format(25, 4), qsgd_format(25, 4, maxnorm=True),
                                 Format(Kind.SIGN, 1), Format(Kind.SSIGN, 1)],
                         ids=["qsgd", "qsgd-inf", "sign", "ssign"])
def test_header_rules_on_synthetic_sums(kernel_backend, fmt):
    """The per-segment header rule of every backend on sums no real input reaches: sign's
    clamp to FP32_MAX (a rescued mean rounding past it), inf and nan, the top-level nudge."""
    backend, device = kernel_backend
    d = 3
    fmt = replace(fmt, numel=d)
    top = (torch.tensor(FP32_MAX * 2.0**-80) ** 2).item()  # rescues to FP32_MAX exactly
    sums = torch.tensor([1.0, INF, INF, INF, float("nan"), 0.0, FP32_MAX, INF])
    rescue = torch.tensor([0.0, 3 * 2.0**96, 2.0**-30, INF, 0.0, 0.0, 0.0, top])
    want = elementwise_torch.header_values(fmt, sums, rescue)
    if backend == "cpu":
        from gradpack.kernels.elementwise_cpu import values_of
        got = values_of(fmt, d, sums, rescue)
    else:
        from gradpack.kernels.elementwise_triton import header_values
        got = header_values(fmt, d, sums.to(device), rescue.to(device)).cpu()
    fin, inf = torch.isfinite(want), torch.isinf(want)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got[inf], want[inf])
    assert torch.equal(got[fin].view(torch.int32), want[fin].view(torch.int32)), (got, want)
    if fmt.kind == Kind.SIGN:
        assert want[1].item() == FP32_MAX  # 3 * 2**96 / 3 * 2**32 = 2**128: clamped
        assert want[2].item() == float(torch.tensor(2.0**-30 / 3)) * 2.0**32
    elif fmt.maxnorm:
        assert want[6].item() == PREV_MAX  # 25 * (FP32_MAX / 25) overflows
    else:
        assert want[1].item() == INF  # sqrt(3) * 2**128
        assert want[2].item() == 2.0**65  # sqrt(2**-30) * 2**80
        if fmt.kind == Kind.QSGD:
            assert want[7].item() == PREV_MAX


# -- not representable: RangeError, nothing written ------------------------------------------
REFUSED = [  # spec, input, what the message names
    ("ssign", lambda: torch.full((4,), 3e38), "the 2-norm"),
    ("qsgd:15", lambda: torch.full((4,), 3e38), "bucket 0's 2-norm"),
    ("qsgd:7:4", lambda: torch.cat([torch.ones(8), torch.full((4,), -2e38)]), "bucket 2's 2-norm"),
    ("randk:0.5", lambda: torch.full((8,), 3e38), "value r_i * d/K"),
    ("randk:0.5:qsgd:1:512:inf", lambda: torch.full((8,), 3e38), "value r_i * d/K"),
    ("randk:4:identity", lambda: torch.full((8,), -3e38), "value r_i * d/K"),
    ("randk:0.5:ssign", lambda: torch.full((8,), 1e38), "value code ssign: the 2-norm"),
    ("ssign", lambda: torch.full((40,), BF16_MAX, dtype=torch.bfloat16), "the 2-norm"),
]
SGDM = Fusion(momentum=1, eta=0.5, residual="sub", update="add")


def _step_refused(c, fusion, x, state, device):
    """Run a step that must raise RangeError; return the message. ``out`` and the state
    must be as they were."""
    d = x.numel()
    out = torch.full((c.payload_bytes(d),), 0xAB, dtype=torch.uint8, device=device)
    before = {k: t.clone() for k, t in state.items()}
    with pytest.raises(RangeError) as err:
        c.step(fusion, x, state, seed=3, out=out)
    assert (out == 0xAB).all(), "out was written"
    for k, t in state.items():
        assert torch.equal(t, before[k]), f"state {k!r} was written"
    return str(err.value)


@pytest.fixture(params=["torch", pytest.param("triton", marks=pytest.mark.triton), "cpu"])
def any_backend(request) -> tuple[str, str]:
    """``(backend, device)``: the torch twin too (it runs where numba does not)."""
    if request.param == "torch":
        return "torch", "cpu"
    device = device_for(request.param)
    if device is None:
        pytest.skip(f"backend {request.param!r} cannot run here (tests/backends.py)")
    return request.param, device


@pytest.mark.parametrize("spec,make,field", REFUSED, ids=[f"{s}-{i}" for i, (s, _, _) in
                                                          enumerate(REFUSED)])
def test_unrepresentable_raises_and_writes_nothing(any_backend, spec, make, field):
    backend, device = any_backend
    c = from_spec(spec, backend=backend)
    x = make().to(device)
    d = x.numel()
    msg = _step_refused(c, PLAIN, x, {}, device)
    assert msg.startswith(f"{c.spec}: ") and field in msg and "nothing was encoded" in msg
    # fused (EF21-SGDM): v = 0, h = -x/2, so r = (0 + x)/2 + x/2 = x again; the momentum
    # pass would change v and the epilogue h, were they written
    half = x.float() * 0.5
    state = {"v": torch.zeros(d, device=device), "h": -half}
    assert field in _step_refused(c, SGDM, x, state, device)


def test_the_value_is_the_true_norm():
    """The message gives the true norm (from the rescue sum), not inf."""
    c = from_spec("qsgd:15", backend="cpu")
    with pytest.raises(RangeError, match=r"bucket 0's 2-norm \(6e\+38\) exceeds float32's range"):
        c.encode(torch.full((4,), 3e38))


@pytest.mark.parametrize("spec", ["sign", "qsgd:3:4", "ssign", "qsgd:3:4:inf"])
def test_an_overflowing_residual_is_refused(kernel_backend, spec):
    """``r = x - h`` overflows (3e38 - (-3e38)) although ``x`` and ``h`` are finite: every
    header built from it is inf, and the step writes nothing (sign's one-pass native path
    packs its bits into scratch first)."""
    backend, device = kernel_backend
    fusion = Fusion(residual="sub", update="none")
    for b in (backend, "torch"):
        c = from_spec(spec, backend=b)
        x = torch.full((8,), 3e38, device=device if b == backend else "cpu")
        state = {"h": -x.clone()}
        msg = _step_refused(c, fusion, x, state, x.device)
        assert "the residual r overflows float32" in msg


def test_check_finite_false_skips_the_range_check():
    """Without ``check_finite`` nothing is read: the payload is unspecified (here: an inf
    norm, which a checking decoder refuses)."""
    c = from_spec("qsgd:15", backend="cpu", check_finite=False)
    payload = c.encode(torch.full((4,), 3e38))
    assert payload[:4].view(torch.float32).item() == float("inf")


# -- Random-K values that fit -----------------------------------------------------------------
@pytest.mark.parametrize("spec", ["randk:0.5", "randk:3", "randk:0.5:biased",
                                  "randk:0.5:qsgd:1:512:inf", "randk:0.5:qsgd:7:4"])
def test_randk_huge_values_that_fit(kernel_backend, spec):
    """``r_i * d/K`` up to 1.7e38 is sent as it is, the same bytes on every backend."""
    backend, device = kernel_backend
    ct, cr = _pair(spec, backend)
    x = _x(12, 1e37, seed=4).clamp(-8.5e37, 8.5e37)
    d = x.numel()
    want = cr.encode(x, seed=7)
    assert torch.equal(ct.encode(x.to(device), seed=7).cpu(), want)
    y = cr.decode(want, d, seed=7)
    assert torch.isfinite(y).all()
    assert torch.equal(ct.decode(want.to(device), d, seed=7).cpu(), y)
    if cr.values is None:  # fp32 values: exactly r_i * d/K
        k = cr.k(d)
        scale = 1.0 if cr.biased else d / k
        nz = y != 0
        assert torch.equal(y[nz], (x[nz] * torch.tensor(scale, dtype=torch.float32)))


def test_topk_sends_huge_values_as_they_are(kernel_backend):
    backend, device = kernel_backend
    ct, cr = _pair("topk:3", backend)
    x = torch.tensor([3e38, 1.0, -FP32_MAX, 1e20, -2.0, 5.0])
    want = cr.encode(x)
    assert torch.equal(ct.encode(x.to(device)).cpu(), want)
    assert torch.equal(cr.decode(want, 6), torch.tensor([3e38, 0, -FP32_MAX, 1e20, 0, 0]))


# -- how the check reaches the caller ---------------------------------------------------------
@pytest.mark.parametrize("spec", ["qsgd:15", "randk:0.5", "randk:0.5:qsgd:3:4"])
def test_deferred_checks_record_the_range_error(spec):
    """Inside ``Faults().deferred()`` (the DDP hook) the range check is a flag like the
    finite check: the call goes on, ``raise_first`` raises the RangeError."""
    c = from_spec(spec, backend="cpu")
    faults = Faults()
    with faults.deferred():
        c.encode(torch.full((8,), 3e38), seed=1)
    with pytest.raises(RangeError, match=f"^{spec}"):
        faults.raise_first()


@pytest.mark.parametrize("spec", ["qsgd:15", "sign", "identity", "randk:0.5",
                                  "randk:0.5:qsgd:3:4"])
def test_pending_flags_are_read_with_the_range_check(spec):
    """``_encode(..., pending)`` (what base.step passes, ``encode_settles_pending``): an
    unread flag of the caller is read with the encode's own, before anything is written."""
    c = from_spec(spec, backend="cpu")
    assert c.encode_settles_pending
    x = torch.ones(8)
    payload = torch.full((c.payload_bytes(8),), 0xAB, dtype=torch.uint8)
    pending = Faults()
    pending.flag(torch.tensor(True), lambda: NonFiniteError("the caller's flag"))
    with pytest.raises(NonFiniteError, match="the caller's flag"):
        c._encode(PLAIN, x, {}, 0, payload, "cpu", pending)
    assert (payload == 0xAB).all()
    pending = Faults()
    pending.flag(torch.tensor(False), lambda: NonFiniteError("unused"))
    c._encode(PLAIN, x, {}, 0, payload, "cpu", pending)
    assert len(pending) == 0 and torch.equal(payload, c.encode(x))
