"""The native CPU segment sums (numba) equal the torch twin bit for bit: every op, fusion
prologue, input dtype and segment shape (one chunk, many chunks, a last segment cut short,
more than CHUNK chunks), on one thread or two."""

import pytest
import torch

from gradpack.kernels import treesum_cpu
from gradpack.kernels.fusion import PLAIN, Fusion
from gradpack.kernels.treesum import CHUNK, Op

try:  # the twin moves to treesum_torch in the restructure (same signature)
    from gradpack.kernels.treesum_torch import segment_sums as twin
except ImportError:
    from gradpack.kernels.treesum import segment_sums as twin

FUSIONS = [PLAIN, Fusion(momentum=1, eta=0.1, residual="sub"),
           Fusion(momentum=2, eta=0.3, residual="sub"), Fusion(residual="error", gamma=0.05)]
OPS = [Op.ABS, Op.SQUARE, Op.MAX]
SHAPES = [(1, 1), (9, 9), (3000, 7), (3000, 128), (2049, 100), (4097, 4097), (5000, 1100),
          (70_001, 70_001)]


def _inputs(d, seglen, fusion, dtype=torch.float32):
    g = torch.Generator().manual_seed(d + seglen)
    x = (torch.randn(d, generator=g) * 3).to(dtype)
    state = {k: torch.randn(d, generator=g) for k in fusion.state_names()}
    return x, state


def _check(fusion, x, state, seglen, op):
    before = {k: t.clone() for k, t in state.items()}
    got = treesum_cpu.segment_sums(fusion, x, state, seglen, op)
    want = twin(fusion, x, state, seglen, op)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want)
    for k in state:  # the stats pass never writes state
        assert torch.equal(state[k], before[k]), k


@pytest.mark.parametrize("d,seglen", SHAPES)
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"m{f.momentum}-{f.residual}")
def test_equals_twin(fusion, op, d, seglen):
    _check(fusion, *_inputs(d, seglen, fusion), seglen, op)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_half_inputs(dtype, op):
    fusion = Fusion(momentum=1, eta=0.1, residual="sub")
    _check(fusion, *_inputs(5000, 1100, fusion, dtype), 1100, op)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_more_than_chunk_chunks(op):
    """A segment of more than CHUNK chunks: the chunk sums are summed in chunks again."""
    d = CHUNK * CHUNK + 3 * CHUNK + 5
    _check(PLAIN, *_inputs(d, d, PLAIN), d, op)


def test_rows_past_the_end_are_padding():
    """The last segment is shorter than the others and spans fewer chunks."""
    _check(PLAIN, *_inputs(1_500_000, 1_030_000, PLAIN), 1_030_000, Op.SQUARE)


def test_thread_count_does_not_matter():
    d = 600_001
    x, state = _inputs(d, 4096, FUSIONS[1])
    old = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(treesum_cpu.segment_sums(FUSIONS[1], x, state, 4096, Op.SQUARE))
            out.append(treesum_cpu.segment_sums(FUSIONS[1], x, state, d, Op.ABS))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[3])


def test_nan_propagates_like_the_twin():
    x = torch.randn(3000)
    x[1234] = float("nan")
    for op in OPS:
        got = treesum_cpu.segment_sums(PLAIN, x, {}, 1000, op)
        want = twin(PLAIN, x, {}, 1000, op)
        assert torch.equal(got.isnan(), want.isnan()) and bool(got[1].isnan())
        assert torch.equal(got[[0, 2]], want[[0, 2]])


@pytest.mark.parametrize("bad", [dict(op=Op.NONE), dict(op=7), dict(seglen=0),
                                 dict(seglen=2.0), dict(x=torch.randn(10, 2)[:, 0])])
def test_bad_arguments(bad):
    args = dict(x=torch.randn(10), seglen=5, op=Op.ABS) | bad
    with pytest.raises(ValueError):
        treesum_cpu.segment_sums(PLAIN, args["x"], {}, args["seglen"], args["op"])


def test_missing_state_is_an_error():
    with pytest.raises(ValueError, match="state"):
        treesum_cpu.segment_sums(FUSIONS[1], torch.randn(10), {}, 5, Op.ABS)
