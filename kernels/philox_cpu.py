"""Native CPU Philox (numba): the same numbers as :mod:`.philox_torch` and Triton's
``tl.randint4x`` / ``tl.rand``, bit for bit (:mod:`.philox` is the spec).

Words are uint32 values held in uint64 (so a 32x32 product is one multiply). Numba's
typing turns ``uint64 op int64`` into float64, so every constant here is a ``np.uint64``.
:func:`block` and :func:`to_uniform` are inlined by the other native kernels;
:func:`uniforms` fills the element stream in parallel.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .native import JIT
from .philox import KEY_A, KEY_B, LANES, M32, N_ROUNDS, ROUND_A, ROUND_B, UNIFORM_SCALE, key

_M32 = np.uint64(M32)
_KA = np.uint64(KEY_A)
_KB = np.uint64(KEY_B)
_RA = np.uint64(ROUND_A)
_RB = np.uint64(ROUND_B)
_S32 = np.uint64(32)
_SCALE = np.float32(UNIFORM_SCALE)


@nb.njit(inline="always", **JIT)
def block(k0, k1, counter):
    """``randint4x`` of one counter (int64 >= 0): four uint32 words as uint64."""
    c0 = np.uint64(counter) & _M32
    c1 = (np.uint64(counter) >> _S32) & _M32
    c2 = np.uint64(0)
    c3 = np.uint64(0)
    for _ in range(N_ROUNDS):
        pb = _RB * c2
        pa = _RA * c0
        c0 = (pb >> _S32) ^ c1 ^ k0
        c2 = (pa >> _S32) ^ c3 ^ k1
        c1 = pb & _M32
        c3 = pa & _M32
        k0 = (k0 + _KA) & _M32
        k1 = (k1 + _KB) & _M32
    return c0, c1, c2, c3


@nb.njit(inline="always", **JIT)
def to_uniform(w):
    """Triton's ``uint_to_uniform_float`` of one uint32 word (held in uint64)."""
    x = np.int64(w)
    if x >= 2**31:
        x -= 2**32
    if x < 0:
        x = -x - 1
    return np.float32(x) * _SCALE


@nb.njit(**JIT)
def draw(k0, k1, lo, n, uni):
    """``uni[0:n]``: the element stream's uniforms of elements ``lo ..`` (``lo % 4 == 0``;
    ``uni`` holds ``n`` rounded up to a multiple of 4): four lanes a block, no branch, so
    LLVM vectorizes the Philox rounds."""
    q0 = lo // LANES
    for t in range((n + LANES - 1) // LANES):
        c0, c1, c2, c3 = block(k0, k1, q0 + t)
        uni[4 * t] = to_uniform(c0)
        uni[4 * t + 1] = to_uniform(c1)
        uni[4 * t + 2] = to_uniform(c2)
        uni[4 * t + 3] = to_uniform(c3)


CHUNK = 1 << 14  # elements a task draws (a multiple of LANES)


@nb.njit(parallel=True, **JIT)
def _uniforms(k0, k1, lo, out):
    n = out.shape[0]
    first = lo - lo % LANES  # element of the first block touched
    nchunks = (lo + n - first + CHUNK - 1) // CHUNK
    for c in nb.prange(nchunks):
        start = first + c * CHUNK
        m = min(CHUNK, lo + n - start)
        uni = np.empty(CHUNK, dtype=np.float32)
        draw(k0, k1, start, m, uni)
        a = max(start, lo)
        out[a - lo : start + m - lo] = uni[a - start : m]


@nb.njit(parallel=True, **JIT)
def _randint4x(k0, k1, offsets, out):
    for t in nb.prange(offsets.shape[0]):
        c0, c1, c2, c3 = block(k0, k1, offsets[t])
        out[0, t] = c0
        out[1, t] = c1
        out[2, t] = c2
        out[3, t] = c3


def keys(seed: int) -> tuple[np.uint64, np.uint64]:
    k0, k1 = key(seed)
    return np.uint64(k0), np.uint64(k1)


def uniforms(seed: int, lo: int, hi: int, out: np.ndarray | None = None) -> np.ndarray:
    """The element stream's uniforms ``u_lo .. u_{hi-1}`` (float32)."""
    if out is None:
        out = np.empty(hi - lo, dtype=np.float32)
    _uniforms(*keys(seed), np.int64(lo), out)
    return out


def randint4x(seed: int, offsets: np.ndarray) -> np.ndarray:
    """[4, n] uint64 words of ``tl.randint4x(seed, offsets)``."""
    out = np.empty((4, offsets.shape[0]), dtype=np.uint64)
    _randint4x(*keys(seed), offsets.astype(np.int64, copy=False), out)
    return out
