"""Native CPU (numba) Random-K: the twin of :mod:`.randk_torch`'s ``indices``, ``encode``
and ``decode_sum``, bit for bit (:mod:`.randk` is the spec: the index stream, the
complement, the value scale and codes).

Index set: Philox blocks are drawn in parallel in batches of :func:`.randk.planned_draws`
draws, then scanned in stream order against a bitmap of ``d`` bits: a draw whose bit is
clear is a first appearance and sets it, until ``m`` are set (``O(draws)``, no sort, and
the batches continue the same counter-based stream, so the set does not depend on the
batch size). The bitmap then holds the set (or, when ``K > d / 2``, its complement):
the ascending indices come from a parallel scan of its words (the scan counted the set
bits per chunk of ``2**16``, which gives every chunk its output offset), expanding only
the set bits.

Encode gathers ``r`` at the ``K`` indices (the prologue evaluated there, state
untouched), scales, writes (or hands the values to the value code's ``write``), and, when
there is a fusion, runs one dense pass that writes the momenta and applies the epilogue
with ``c`` merged in from the ascending indices (:func:`.sparse_cpu.step`). Decode
regenerates one index set per distinct seed and scatter-adds the rows in order.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from numba.cpython.unsafe.numbers import trailing_zeros

from .fusion import Fusion
from .native import JIT, array, threads
from .philox_cpu import block, keys
from .randk import CheckValues, ReadValues, WriteValues, planned_draws, value_scale
from .sparse_cpu import (
    Args,
    accumulator,
    finish,
    flat,
    residual_at,
    scatter_add_arrays,
    step,
    zero,
)

_CHUNK = 16  # log2 of the bitmap bits per chunk of the ascending scan
_S32 = np.uint64(32)
_ONE = np.uint64(1)
_LOW6 = np.int64(63)
_DRAW_COST = 16  # a draw (half a Philox block) costs about this many elements of a pass


@nb.njit(inline="always", **JIT)
def _bounded(hi, lo, d):
    """``floor((hi * 2**32 + lo) * d / 2**64)`` (:func:`.randk.bounded`; uint64 words)."""
    return np.int64((hi * d + ((lo * d) >> _S32)) >> _S32)


@nb.njit(parallel=True, **JIT)
def _first_distinct(k0, k1, d, m, nq, bitmap, counts):
    """Set the bits of the first ``m`` distinct draws of the stream (batches of ``nq``
    Philox blocks, two draws each); ``counts[c]``: bits set in chunk ``c``."""
    ud = np.uint64(d)
    draws = np.empty(2 * nq, dtype=np.int64)
    q0 = 0
    got = 0
    while got < m:
        for t in nb.prange(nq):
            c0, c1, c2, c3 = block(k0, k1, q0 + t)
            draws[2 * t] = _bounded(c0, c1, ud)
            draws[2 * t + 1] = _bounded(c2, c3, ud)
        for j in range(2 * nq):
            v = draws[j]
            w = v >> 6
            bit = _ONE << np.uint64(v & _LOW6)
            if not bitmap[w] & bit:
                bitmap[w] |= bit
                counts[v >> _CHUNK] += 1
                got += 1
                if got == m:
                    break
        q0 += nq


@nb.njit(parallel=True, **JIT)
def _ascending(bitmap, counts, d, complement, out):
    """The set bits (the clear ones below ``d`` with ``complement``), ascending."""
    nchunks = counts.shape[0]
    nwords = bitmap.shape[0]
    per = 1 << (_CHUNK - 6)
    starts = np.empty(nchunks, dtype=np.int64)
    total = 0
    for c in range(nchunks):
        starts[c] = total
        total += min(d, (c + 1) << _CHUNK) - (c << _CHUNK) - counts[c] if complement \
            else counts[c]
    tail = np.uint64(d & 63)
    for c in nb.prange(nchunks):
        pos = starts[c]
        for w in range(c * per, min(nwords, (c + 1) * per)):
            word = bitmap[w]
            if complement:
                word = ~word
                if w == nwords - 1 and tail != 0:
                    word &= (_ONE << tail) - _ONE
            while word != 0:
                out[pos] = w * 64 + np.int64(trailing_zeros(word))
                pos += 1
                word &= word - _ONE


def index_array(seed: int, d: int, k: int) -> np.ndarray:
    """The ``k`` selected coordinates (int64, ascending) for ``seed``, as numpy."""
    if not 1 <= k <= d:
        raise ValueError(f"randk: K must be in [1, {d}], got {k}")
    if k == d:
        return np.arange(d, dtype=np.int64)
    complement = k > d - k
    m = d - k if complement else k
    bitmap = np.zeros(-(-d // 64), dtype=np.uint64)
    counts = np.zeros(-(-d >> _CHUNK), dtype=np.int64)
    k0, k1 = keys(seed)
    threads(_DRAW_COST * m)
    _first_distinct(k0, k1, np.int64(d), np.int64(m),
                    np.int64((planned_draws(m, d) + 1) // 2), bitmap, counts)
    out = np.empty(k, dtype=np.int64)
    threads(d >> 4)  # a word of 64 bits costs about 4 elements of a pass
    _ascending(bitmap, counts, np.int64(d), complement, out)
    return out


def indices(seed: int, d: int, k: int, device="cpu") -> torch.Tensor:
    """Twin of :func:`.randk_torch.indices`: int64, ascending (CPU only)."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"randk: native CPU indices cannot be made on {device}")
    return torch.from_numpy(index_array(seed, d, k))


def encode(unbiased: bool, k: int, fusion: Fusion, x: torch.Tensor, state, seed: int,
           payload: torch.Tensor, write: WriteValues | None = None,
           check: CheckValues | None = None) -> None:
    """Twin of :func:`.randk_torch.encode`."""
    x = flat(x)
    d = x.numel()
    if payload.dtype != torch.uint8 or payload.dim() != 1 or not payload.is_contiguous() \
            or payload.device.type != "cpu" or (write is None and payload.numel() < 4 * k):
        raise ValueError(f"randk: payload must be a contiguous 1-D uint8 CPU tensor holding "
                         f"{k} values, got {payload.dtype} {tuple(payload.shape)}")
    idx = index_array(seed, d, k)
    args = Args(fusion, x, state)
    direct = write is None and check is None  # unchecked fp32 values: into the payload
    if direct:
        vals = array(payload[: 4 * k].view(torch.float32))
    else:
        vals_t = torch.empty(k, dtype=torch.float32)
        vals = array(vals_t)
    residual_at(args, idx, value_scale(d, k, unbiased), vals)
    if check is not None:
        check(vals_t, torch.from_numpy(idx))  # nothing is written before this
    if write is None:
        if not direct:
            array(payload[: 4 * k].view(torch.float32))[:] = vals
        zero(payload[4 * k :])
        c, plus_zero = vals, True
    else:
        c_t = write(vals_t, payload)
        if c_t.dtype != torch.float32 or c_t.numel() != k:
            raise ValueError(f"randk: the value code must decode to {k} fp32 values, got "
                             f"{c_t.numel()} {c_t.dtype}")
        c, plus_zero = array(flat(c_t)), False
    if not fusion.is_identity:
        step(args, idx, c, plus_zero)


def decode_sum(k: int, payloads: torch.Tensor, d: int, seeds, out: torch.Tensor,
               scale: float, add: bool, read: ReadValues | None = None) -> None:
    """Twin of :func:`.randk_torch.decode_sum`: ``out (+)= scale * sum_i C_i``, rows in
    order, each row's indices regenerated from its seed."""
    acc = accumulator(out, add)
    a = array(acc)
    sets: dict[int, np.ndarray] = {}  # one index set per distinct seed
    for i, seed in enumerate(seeds):
        vals = payloads[i, : 4 * k].view(torch.float32) if read is None else read(payloads[i],
                                                                                    seed)
        if seed not in sets:
            sets[seed] = index_array(seed, d, k)
        scatter_add_arrays(a, sets[seed], array(flat(vals)), scale)
    finish(acc, out)
