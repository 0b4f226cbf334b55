"""pytest-benchmark microbenchmarks at a small size, run on demand::

    pytest bench/ --benchmark-only            (not part of the test suite: testpaths = tests)

Each compressor's encode, decode-and-sum of 4 payloads and fused EF21 / EF14 steps, next
to the copy of the same input and the eager baseline of the same op (same group), so
pytest-benchmark's comparison table shows the ratios. ``gradpack bench`` is the tool that
writes results files; this suite is for quick before/after comparisons of a change.
"""

import pytest
import torch

from gradpack.bench.baselines import baseline
from gradpack.bench.roofline import OPS
from gradpack.bench.suite import FUSIONS, default_specs
from gradpack.compressors import from_spec

D = 1 << 16
N = 4


@pytest.fixture(scope="module")
def x():
    return torch.randn(D, generator=torch.Generator().manual_seed(0))


def _op(spec, op, x):
    c = from_spec(spec, backend="torch")
    payload = c.encode(x, seed=0)
    payloads = torch.stack([c.encode(x * (i + 1), seed=i) for i in range(N)])
    out, h = torch.empty(D), torch.zeros(D)
    if op == "encode":
        fn = lambda: c.encode(x, seed=0, out=payload)  # noqa: E731
    elif op == "decode_sum":
        fn = lambda: c.decode_sum(payloads, D, seeds=list(range(N)), out=out)  # noqa: E731
    else:
        fn = lambda: c.step(FUSIONS[op], x, {"h": h}, seed=0, out=payload)  # noqa: E731
    decode_each = lambda: [c.decode(payloads[i], D, seed=i) for i in range(N)]  # noqa: E731
    return fn, baseline(op, spec, x, {"h": torch.zeros(D)}, decode_each)


def test_copy(benchmark, x):
    dst = torch.empty_like(x)
    benchmark.group = "copy"
    benchmark(dst.copy_, x)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("spec", default_specs())
@pytest.mark.parametrize("impl", ["gradpack", "baseline"])
def test_op(benchmark, x, spec, op, impl):
    fn, (base_name, base_fn) = _op(spec, op, x)
    if impl == "baseline":
        if base_fn is None:
            pytest.skip(f"no baseline for {spec} {op}")
        fn = base_fn
        benchmark.extra_info["baseline"] = base_name
    benchmark.group = f"{spec} {op}"
    benchmark(fn)
