"""Deterministic segment sums: the documented order, and Triton equal to the twin."""

import pytest
import torch

from gradpack.kernels import treesum, treesum_torch
from gradpack.kernels.fusion import PLAIN, Fusion


def _ref(vals, seglen):
    """Independent recursive statement of the order in treesum's docstring."""
    def seg_sum(xs):
        if len(xs) <= treesum.CHUNK:
            xs = xs + [0.0] * (treesum.next_pow2(len(xs)) - len(xs))
            while len(xs) > 1:
                xs = [float(torch.tensor(xs[i], dtype=torch.float32)
                            + torch.tensor(xs[i + 1], dtype=torch.float32))
                      for i in range(0, len(xs), 2)]
            return xs[0]
        chunks = [xs[i:i + treesum.CHUNK] for i in range(0, len(xs), treesum.CHUNK)]
        return seg_sum([seg_sum(c + [0.0] * (treesum.CHUNK - len(c))) for c in chunks])
    v = vals.tolist()
    return [seg_sum(v[i:i + seglen]) for i in range(0, len(v), seglen)]


@pytest.mark.parametrize("d,seglen", [(1, 1), (5, 5), (7, 3), (1500, 1500), (2500, 2500),
                                      (3000, 7), (4097, 512)])
def test_order_matches_reference(d, seglen):
    x = torch.randn(d, generator=torch.Generator().manual_seed(d)).abs()
    got = treesum_torch.tree_sum_rows(x, seglen)
    assert got.tolist() == _ref(x, seglen)


@pytest.mark.parametrize("d,seglen", [(1, 1), (7, 3), (2500, 2500), (4097, 512)])
def test_max_op_is_the_segment_maximum(d, seglen):
    """OP_MAX: the maximum of |r| per segment, exactly (padding never wins)."""
    x = -torch.randn(d, generator=torch.Generator().manual_seed(d)).abs()
    got = treesum_torch.segment_sums(PLAIN, x, {}, seglen, treesum.Op.MAX)
    want = [max(abs(v) for v in x[i:i + seglen].tolist()) for i in range(0, d, seglen)]
    assert got.tolist() == want


FUSIONS = [PLAIN, Fusion(momentum=1, eta=0.1, residual="sub"),
           Fusion(momentum=2, eta=0.3, residual="sub"), Fusion(residual="error", gamma=0.05)]


@pytest.mark.triton
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("op", [treesum.Op.ABS, treesum.Op.SQUARE, treesum.Op.MAX])
@pytest.mark.parametrize("d,seglen", [(1, 1), (9, 9), (4097, 4097), (3000, 128), (5000, 1100),
                                      (2049, 100)])
def test_triton_matches_torch(tdevice, fusion, op, d, seglen):
    from gradpack.kernels.treesum_triton import segment_sums as segment_sums_triton

    g = torch.Generator().manual_seed(d + seglen)
    x = torch.randn(d, generator=g)
    state = {k: torch.randn(d, generator=g) for k in fusion.state_names()}
    want = treesum_torch.segment_sums(fusion, x, state, seglen, op)
    got = segment_sums_triton(fusion, x.to(tdevice), {k: t.to(tdevice) for k, t in state.items()},
                              seglen, op)
    assert torch.equal(got.cpu(), want)
