"""Deterministic segment sums: the reduction order is part of the contract.

Compressor headers (sign's mean |r|, QSGD's per-bucket norms) are sums; a different
summation order changes the last bits, and then the packed codes. Every backend
therefore sums a segment of ``m`` non-negative values the same way:

- ``m <= CHUNK``: pad with zeros to the next power of two and add adjacent pairs,
  level by level (``x[2i] + x[2i+1]``), down to one value;
- ``m > CHUNK``: cut the segment into chunks of ``CHUNK`` (the last padded with
  zeros), sum each chunk as above, and sum the chunk sums the same way, recursively.

Zeros added by padding are exact, and each pairwise add rounds once, so every backend
(:mod:`.treesum_torch`, :mod:`.treesum_triton`, :mod:`.treesum_cpu`) agrees bit for bit.
``Op.MAX`` (QSGD's max-norm) combines ``|r|`` with ``max`` in the same tree; a maximum is exact in
any order, and the zero padding cannot exceed an ``|r|``.

``scale`` (a power of two, :func:`.format.Format.rescue_scale`) multiplies ``r`` before the op:
the overflow rescue of the header sums, ``|r scale|`` or ``(r scale)**2`` in the same order.
"""

from __future__ import annotations

from enum import IntEnum

import torch

from .dispatch import Table
from .fusion import Fusion

CHUNK = 1024


class Op(IntEnum):
    """What a segment reduction combines: ``x`` as is, ``|r|``, ``r*r`` (sums) or ``|r|``
    (maxima)."""

    NONE = 0
    ABS = 1
    SQUARE = 2
    MAX = 3


def next_pow2(m: int) -> int:
    return 1 << (m - 1).bit_length()


def chunk_width(seglen: int) -> int:
    """Tile width (a power of two) the segments are summed in."""
    return next_pow2(seglen) if seglen <= CHUNK else CHUNK


IMPLS = Table("treesum", torch=".treesum_torch", triton=".treesum_triton", cpu=".treesum_cpu")


def segment_sums(fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor], seglen: int,
                 op: Op, backend: str, scale: float = 1.0) -> torch.Tensor:
    """Tree sums of ``|r|`` (``Op.ABS``) or ``r*r`` (``Op.SQUARE``), or maxima of ``|r|``
    (``Op.MAX``), over segments of ``seglen`` elements of the residual ``r = prologue(x)``
    (times ``scale``, a power of two), without touching ``state``: fp32, one value per
    segment."""
    return IMPLS(backend).segment_sums(fusion, x, state, seglen, op, scale)
