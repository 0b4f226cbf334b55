"""Deterministic segment sums: the reduction order is part of the contract.

Compressor headers (sign's mean |r|, QSGD's per-bucket norms) are sums; a different
summation order changes the last bits, and then the packed codes. Every backend
therefore sums a segment of ``m`` non-negative values the same way:

- ``m <= CHUNK``: pad with zeros to the next power of two and add adjacent pairs,
  level by level (``x[2i] + x[2i+1]``), down to one value;
- ``m > CHUNK``: cut the segment into chunks of ``CHUNK`` (the last padded with
  zeros), sum each chunk as above, and sum the chunk sums the same way, recursively.

Zeros added by padding are exact, and each pairwise add rounds once, so the Triton
kernels (:mod:`.treesum_triton`) and this torch twin agree bit for bit. ``OP_MAX``
(QSGD's max-norm) combines ``|r|`` with ``max`` in the same tree; a maximum is exact in
any order, and the zero padding cannot exceed an ``|r|``.
"""

from __future__ import annotations

from enum import IntEnum

import torch

from .fusion import Fusion, prologue

CHUNK = 1024


class Op(IntEnum):
    """What a segment reduction combines: ``x`` as is, ``|r|``, ``r*r`` (sums) or ``|r|``
    (maxima)."""

    NONE = 0
    ABS = 1
    SQUARE = 2
    MAX = 3


OP_NONE, OP_ABS, OP_SQUARE, OP_MAX = Op.NONE, Op.ABS, Op.SQUARE, Op.MAX


def next_pow2(m: int) -> int:
    return 1 << (m - 1).bit_length()


def chunk_width(seglen: int) -> int:
    """Tile width (a power of two) the segments are summed in."""
    return next_pow2(seglen) if seglen <= CHUNK else CHUNK


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
    fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor], seglen: int, op: int
) -> torch.Tensor:
    """Tree sums of ``|r|`` (``OP_ABS``) or ``r*r`` (``OP_SQUARE``), or maxima of ``|r|``
    (``OP_MAX``), over segments of the residual ``r = prologue(x)``, without touching
    ``state``."""
    r = prologue(fusion, x, state, write=False)
    vals = r.mul_(r) if op == OP_SQUARE else r.abs_()
    return tree_sum_rows(vals, seglen, torch.maximum if op == OP_MAX else torch.add)
