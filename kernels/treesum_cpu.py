"""Native CPU segment sums (numba): :mod:`.treesum`'s documented order, bit for bit.

A segment of ``m <= CHUNK`` values is padded with zeros to ``P = next_pow2(m)`` and
halved level by level (``x[2i] + x[2i+1]``); a longer one is cut into chunks of
``CHUNK`` (the last padded), each summed so, and the chunk sums summed the same way,
recursively. :func:`chunk_sums` computes every chunk of every segment (in parallel over
ranges of chunks, :func:`.native.run_blocks`), each
from the fusion prologue's residual (:func:`.fusion_cpu.residual`, nothing written), with
the op (``|r|`` or ``r*r``) fused into the first level (after the power-of-two ``scale`` of
the overflow rescue, when it is not 1); :func:`finish` combines a segment's chunk sums
serially (there are ``d / CHUNK`` of them). ``Op.MAX`` takes the maximum of
``|r|`` in one linear scan: a maximum is exact in any order, so it equals the tree's, and
a NaN anywhere gives NaN as ``torch.maximum`` does.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from .fusion import Fusion, check_state
from .fusion_cpu import residual, scalars, sources, state_arrays
from .native import JIT, run_blocks, set_threads
from .treesum import CHUNK, Op, chunk_width

ABS, SQUARE, MAX = int(Op.ABS), int(Op.SQUARE), int(Op.MAX)
GRAIN = 65536  # fewest elements worth a thread
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_NAN = np.float32(np.nan)


@nb.njit(inline="always", **JIT)
def pairwise(a, b, p):
    """Sum of ``a[0:p]`` (``p`` a power of two) halved level by level; ``b`` is scratch
    of ``p // 2`` values; ``a`` is overwritten."""
    while p > 1:
        p //= 2
        for i in range(p):
            b[i] = a[2 * i] + a[2 * i + 1]
        a, b = b, a
    return a[0]


@nb.njit(inline="always", **JIT)
def maximum(a, m):
    """``max(a[0:m])`` of non-negative values, NaN if any is NaN."""
    best = _ZERO
    nan = False
    for i in range(m):
        best = a[i] if a[i] > best else best
        nan |= a[i] != a[i]
    return _NAN if nan else best


@nb.njit(**JIT)
def chunk_of(r, n, p, op, a, b):
    """The tree value of one chunk whose ``n`` residuals are ``r[0:n]`` (``p`` wide)."""
    if op == MAX:
        for j in range(n):
            a[j] = abs(r[j])
        return maximum(a, n)
    for j in range(n, p):
        r[j] = _ZERO
    if p == 1:
        return abs(r[0]) if op == ABS else r[0] * r[0]
    half = p // 2
    if op == ABS:
        for i in range(half):
            a[i] = abs(r[2 * i]) + abs(r[2 * i + 1])
    else:
        for i in range(half):
            a[i] = r[2 * i] * r[2 * i] + r[2 * i + 1] * r[2 * i + 1]
    return pairwise(a, b, half)


@nb.njit(**JIT)
def chunk_sums(row0, row1, xf, xh, xkind, v, u, h, d, seglen, p, nchunk, momentum, rcode,
               keep, take, gamma, op, scale, out):
    """``out[row]`` for the rows ``row0 .. row1-1`` (row = one chunk of ``p`` elements of
    one segment): the chunk's tree value of ``op(r * scale)`` over the residual ``r``
    (padding counts as zeros)."""
    r = np.empty(p, dtype=np.float32)
    a = np.empty(p, dtype=np.float32)
    b = np.empty(max(1, p // 2), dtype=np.float32)
    for row in range(row0, row1):
        seg = row // nchunk
        pos = (row - seg * nchunk) * p
        lo = seg * seglen + pos
        n = max(0, min(p, seglen - pos, d - lo))  # rows past d are all padding
        residual(xf, xh, xkind, v, u, h, lo, n, momentum, rcode, keep, take, gamma, False, r)
        if scale != _ONE:
            for j in range(n):
                r[j] = r[j] * scale
        out[row] = chunk_of(r, n, p, op, a, b)


@nb.njit(**JIT)
def tree_values(vals, m, op):
    """The documented-order sum (or maximum) of the ``m`` non-negative ``vals``."""
    cur = vals[:m].copy()
    while True:
        p = 1
        while p < min(m, CHUNK):
            p *= 2
        a = np.empty(p, dtype=np.float32)
        b = np.empty(max(1, p // 2), dtype=np.float32)
        nxt = np.empty((m + p - 1) // p, dtype=np.float32)
        for ci in range(nxt.shape[0]):
            n = min(p, m - ci * p)
            if op == MAX:
                nxt[ci] = maximum(cur[ci * p :], n)
                continue
            for j in range(p):
                a[j] = cur[ci * p + j] if j < n else _ZERO
            nxt[ci] = pairwise(a, b, p)
        if nxt.shape[0] == 1:
            return nxt[0]
        cur = nxt
        m = nxt.shape[0]


@nb.njit(**JIT)
def finish(partial, nseg, nchunk, op, out):
    """``out[s]``: the sum (maximum) of segment ``s``'s ``nchunk`` chunk values."""
    for s in range(nseg):
        out[s] = tree_values(partial[s * nchunk :], nchunk, op)


def sums_of(xf, xh, xkind, v, u, h, d: int, seglen: int, op: int, fusion_scalars,
            scale: float = 1.0) -> np.ndarray:
    """Per-segment tree sums (fp32 numpy) of ``op(r * scale)``; the arrays as
    :func:`chunk_sums` takes them, ``fusion_scalars`` from :func:`.fusion_cpu.scalars`."""
    momentum, rcode, _, keep, take, gamma, _ = fusion_scalars
    nseg = -(-d // seglen)
    p = chunk_width(seglen)
    nchunk = -(-seglen // p)
    partial = np.empty(nseg * nchunk, dtype=np.float32)
    run_blocks(chunk_sums, nseg * nchunk, max(1, GRAIN // p), xf, xh, xkind, v, u, h,
               np.int64(d), np.int64(seglen), np.int64(p), np.int64(nchunk), momentum, rcode,
               keep, take, gamma, np.int64(op), np.float32(scale), partial)
    if nchunk == 1:
        return partial
    out = np.empty(nseg, dtype=np.float32)
    finish(partial, np.int64(nseg), np.int64(nchunk), np.int64(op), out)
    return out


def segment_sums(fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor], seglen: int,
                 op: int, scale: float = 1.0) -> torch.Tensor:
    """Native twin of :func:`.treesum.segment_sums`: tree sums of ``|r|`` (``Op.ABS``) or
    ``r*r`` (``Op.SQUARE``), or maxima of ``|r|`` (``Op.MAX``), over segments of
    ``seglen`` elements of the residual ``r = prologue(x)`` (times ``scale``), without
    touching ``state``."""
    if op not in (ABS, SQUARE, MAX):
        raise ValueError(f"segment_sums: op must be Op.ABS, Op.SQUARE or Op.MAX, got {op!r}")
    if not isinstance(seglen, int) or isinstance(seglen, bool) or seglen < 1:
        raise ValueError(f"segment_sums: seglen must be a positive int, got {seglen!r}")
    if x.device.type != "cpu" or not x.is_contiguous() or x.numel() < 1:
        raise ValueError("segment_sums: x must be a non-empty contiguous CPU tensor")
    check_state(fusion, x, state)
    set_threads()
    xf, xh, xkind = sources(x)
    v, u, h = state_arrays(fusion, state)
    sums = sums_of(xf, xh, xkind, v, u, h, x.numel(), seglen, int(op), scalars(fusion), scale)
    return torch.from_numpy(sums)
