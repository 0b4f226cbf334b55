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


def op_terms(r: torch.Tensor, op: Op, scale: float = 1.0) -> torch.Tensor:
    """The terms a segment reduction combines, ``|r s|`` or ``(r s)**2`` (``s = scale``, a
    power of two: exact unless a term underflows), as a new tensor."""
    t = r * scale if scale != 1.0 else r
    return t * t if op == Op.SQUARE else t.abs()


def segment_sums(
    fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor], seglen: int, op: Op,
    scale: float = 1.0,
) -> torch.Tensor:
    """Tree sums of ``|r|`` (``Op.ABS``) or ``r*r`` (``Op.SQUARE``), or maxima of ``|r|``
    (``Op.MAX``), over segments of the residual ``r = prologue(x)`` (times ``scale``),
    without touching ``state``."""
    r = prologue(fusion, x, state, write=False)
    return tree_sum_rows(op_terms(r, op, scale), seglen,
                         torch.maximum if op == Op.MAX else torch.add)
