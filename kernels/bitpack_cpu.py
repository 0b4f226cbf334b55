"""Native CPU bit packing (numba): the :mod:`.bitpack` wire format, bit for bit.

Fields are packed in groups of 32 (a group of 32 fields of width ``w`` fills exactly ``w``
words), as the Triton kernels tile the work. :func:`pack_group` and :func:`field` are
inlined by the compressor kernels, which compute their codes in registers and pack them in
place; :func:`pack` / :func:`unpack` are the parallel entry points.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from .native import JIT, array, set_threads

_M32 = np.uint64(0xFFFFFFFF)


@nb.njit(inline="always", **JIT)
def pack_group(codes, n, width, words, w0, nwords):
    """Pack ``codes[0:n]`` (uint64 fields, ``n <= 32``, the rest of the group zero) into
    ``words[w0 : w0 + width]`` (int32), never writing at or past ``nwords``."""
    acc = np.uint64(0)
    filled = 0
    out = w0
    for j in range(32):
        c = codes[j] if j < n else np.uint64(0)
        acc |= c << np.uint64(filled)
        filled += width
        if filled >= 32:
            if out < nwords:
                words[out] = np.int32(np.int64(acc & _M32) - ((np.int64(acc & _M32) >> 31) << 32))
            out += 1
            filled -= 32
            acc = c >> np.uint64(width - filled) if filled > 0 else np.uint64(0)


@nb.njit(inline="always", **JIT)
def field(words, i, width, nwords):
    """Field ``i`` (uint64) of width ``width``; bits past ``nwords`` read as zeros."""
    bit = np.int64(i) * width
    w = bit >> 5
    off = np.uint64(bit & 31)
    lo = np.uint64(np.uint32(words[w])) if w < nwords else np.uint64(0)
    hi = np.uint64(np.uint32(words[w + 1])) if w + 1 < nwords else np.uint64(0)
    return ((hi << np.uint64(32)) | lo) >> off & np.uint64((1 << width) - 1)


@nb.njit(parallel=True, **JIT)
def _pack(fields, width, words):
    n = fields.shape[0]
    groups = (n + 31) // 32
    nwords = words.shape[0]
    for g in nb.prange(groups):
        codes = np.zeros(32, dtype=np.uint64)
        m = min(32, n - g * 32)
        for j in range(m):
            codes[j] = np.uint64(fields[g * 32 + j])
        pack_group(codes, m, width, words, np.int64(g) * width, nwords)


@nb.njit(parallel=True, **JIT)
def _unpack(words, n, width, out):
    nwords = words.shape[0]
    for i in nb.prange(n):
        out[i] = np.int64(field(words, i, width, nwords))


def pack(fields, width: int, words) -> None:
    """Pack integer ``fields`` (each in ``[0, 2**width)``) into the int32 ``words``
    (``words_for(n, width)`` of them); numpy arrays or CPU tensors."""
    set_threads()
    _pack(_np(fields), np.int64(width), _np(words))


def unpack(words, n: int, width: int):
    """The first ``n`` fields (int64) of the int32 ``words``: a tensor for a tensor."""
    set_threads()
    out = np.empty(n, dtype=np.int64)
    _unpack(_np(words), np.int64(n), np.int64(width), out)
    return torch.from_numpy(out) if isinstance(words, torch.Tensor) else out


def _np(a) -> np.ndarray:
    return array(a) if isinstance(a, torch.Tensor) else a
