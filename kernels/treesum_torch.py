"""Torch twin of :mod:`.treesum`: the documented pairwise order, level by level."""

from __future__ import annotations

import torch

from .fusion import Fusion
from .fusion_torch import prologue
from .treesum import Op, chunk_width


def _halve_to_one(x: torch.Tensor, combine) -> torch.Tensor:
    while x.shape[1] > 1:
        x = combine(x[:, 0::2], x[:, 1::2])
    return x[:, 0]


def tree_sum_rows(x: torch.Tensor, seglen: int, combine=torch.add) -> torch.Tensor:
    """Sum consecutive segments of ``seglen`` values of the 1-D tensor ``x`` (the last
    segment may be shorter) in the documented order; ``combine=torch.maximum`` takes
    maxima of non-negative values instead. Returns [ceil(len / seglen)]."""
    d = x.numel()
    nseg = -(-d // seglen)
    width = chunk_width(seglen)
    nchunk = -(-seglen // width)
    # [nseg, nchunk * width]: each segment padded with zeros to whole chunks
    if nseg * seglen == d and nchunk * width == seglen:
        tiles = x.view(nseg * nchunk, width)
    else:
        padded = x.new_zeros(nseg, nchunk * width)
        full = d // seglen
        padded[:full, :seglen] = x[: full * seglen].view(full, seglen)
        if full < nseg:
            padded[full, : d - full * seglen] = x[full * seglen :]
        tiles = padded.view(nseg * nchunk, width)
    partial = _halve_to_one(tiles, combine)
    if nchunk == 1:
        return partial
    return tree_sum_rows(partial, nchunk, combine)


def segment_sums(
    fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor], seglen: int, op: Op
) -> torch.Tensor:
    """Tree sums of ``|r|`` (``Op.ABS``) or ``r*r`` (``Op.SQUARE``), or maxima of ``|r|``
    (``Op.MAX``), over segments of the residual ``r = prologue(x)``, without touching
    ``state``."""
    r = prologue(fusion, x, state, write=False)
    vals = r.mul_(r) if op == Op.SQUARE else r.abs_()
    return tree_sum_rows(vals, seglen, torch.maximum if op == Op.MAX else torch.add)
