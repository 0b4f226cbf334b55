"""Native CPU (numba) side of :mod:`.sparse`: what the Top-K and Random-K kernels share
(the fused prologue and epilogue, the dense fused pass, the decode accumulator) and the
decode-side scatter-add (the twin of :func:`.sparse_torch.scatter_add`).

Every element operation is the fp32 sequence of :mod:`.fusion` (one rounding each, no
fused multiply-adds: :data:`.native.JIT` has no fast-math), so a native step equals the
torch twin bit for bit. fp16 / bf16 inputs arrive as their int16 bits
(:func:`.native.array`) and are widened to fp32 exactly, in integer arithmetic.
Integer codes (input format, residual, update) are runtime arguments, named below.
Dense passes work a ``TILE`` at a time in stages with the code branches outside the loops
(LLVM vectorizes them; a per-element branchy body ran several times slower); gathers at
scattered indices use the per-element :func:`prologue_at`. Parallel work items are
``BLOCK``s of elements (``prange``); a call with little work runs on one thread
(:func:`threads`), which changes no result.
"""

from __future__ import annotations

from enum import IntEnum

import numba as nb
import numpy as np
import torch

from .fusion import Fusion, Residual, Update
from .native import JIT, array, threads


class Source(IntEnum):
    """Input format of a native sparsifier kernel (fp16 and bf16 arrive as int16 bits)."""

    FP32 = 0
    FP16 = 1
    BF16 = 2


SOURCES = {torch.float32: Source.FP32, torch.float16: Source.FP16,
           torch.bfloat16: Source.BF16}
_FP32 = int(Source.FP32)
_BF16 = int(Source.BF16)
_SUB = int(Residual.SUB)
_ERROR = int(Residual.ERROR)
_NONE = int(Update.NONE)
_ADD = int(Update.ADD)
_SET_ERROR = int(Update.ERROR)
_MAG = np.int32(0x7FFFFFFF)
_SUBNORMAL = np.float32(2.0**-24)  # fp16 subnormal step
BLOCK = 1 << 16  # elements per parallel work item of the dense passes
TILE = 2048  # elements per vectorized stage within a block (BLOCK is a multiple)
#: a random access (a cache miss: gathers, scatters, strided samples) costs about this
#: many elements of a streaming pass
MISS_COST = 32


# -- one element ------------------------------------------------------------------------
@nb.njit(inline="always", **JIT)
def half_to_fp32(b):
    """The fp32 value of the fp16 bits ``b`` (int in [0, 2**16)), exactly."""
    sign = np.uint32((b & 0x8000) << 16)
    e = (b >> 10) & 0x1F
    m = b & 0x3FF
    if e == 0x1F:  # inf / nan (quieted, as x86's vcvtph2ps, torch's .float(), does)
        quiet = 0x400000 if m else 0
        return np.uint32(sign | np.uint32(0x7F800000 | (m << 13) | quiet)).view(np.float32)
    if e != 0:
        return np.uint32(sign | np.uint32(((e + 112) << 23) | (m << 13))).view(np.float32)
    mag = np.float32(m) * _SUBNORMAL  # zero or subnormal: m * 2**-24 is exact in fp32
    return np.uint32(sign | np.float32(mag).view(np.uint32)).view(np.float32)


@nb.njit(inline="always", **JIT)
def load(x, i, source):
    """Element ``i`` of the input as fp32 (``x``: float32 values or fp16/bf16 int16 bits)."""
    if source == _FP32:
        return np.float32(x[i])
    b = np.int32(x[i]) & 0xFFFF
    if source == _BF16:
        return np.uint32(b << 16).view(np.float32)
    return half_to_fp32(b)


@nb.njit(inline="always", **JIT)
def key(r):
    """Order-preserving int32 image of ``|r|`` (:func:`.sparse.key_image`)."""
    return np.float32(r).view(np.int32) & _MAG


@nb.njit(inline="always", **JIT)
def prologue_at(x, source, v, u, h, i, momentum, residual, keep, take, gamma, write):
    """``r_i`` of :func:`.fusion.prologue`; with ``write`` the momenta are stored."""
    src = load(x, i, source)
    if momentum >= 1:
        v_new = v[i] * keep + src * take
        src = v_new
        if momentum == 2:
            src = u[i] * keep + v_new * take
            if write:
                u[i] = src
        if write:
            v[i] = v_new
    if residual == _SUB:
        return src - h[i]
    if residual == _ERROR:
        return h[i] + src * gamma
    return src


@nb.njit(inline="always", **JIT)
def first_at_least(idx, lo):
    """First position ``j`` of the ascending ``idx`` with ``idx[j] >= lo``."""
    a = 0
    b = idx.shape[0]
    while a < b:
        mid = (a + b) >> 1
        if idx[mid] < lo:
            a = mid + 1
        else:
            b = mid
    return a


@nb.njit(inline="always", **JIT)
def residual_tile(x, source, v, u, h, lo, n, momentum, residual, keep, take, gamma, write, r):
    """``r[0:n]`` = the residual at elements ``lo .. lo+n-1`` (:func:`prologue_at` over a
    tile, with the branches outside the loops so that LLVM vectorizes them; loops index
    slices from 0, which lets it drop numba's negative-index wrap)."""
    xs = x[lo : lo + n]
    if source == _FP32:
        for j in range(n):
            r[j] = np.float32(xs[j])
    elif source == _BF16:
        for j in range(n):
            r[j] = np.uint32((np.int32(xs[j]) & 0xFFFF) << 16).view(np.float32)
    else:
        for j in range(n):
            r[j] = half_to_fp32(np.int32(xs[j]) & 0xFFFF)
    if momentum >= 1:
        vs = v[lo : lo + n]
        if momentum == 2:
            us = u[lo : lo + n]
            if write:
                for j in range(n):
                    v_new = vs[j] * keep + r[j] * take
                    vs[j] = v_new
                    r[j] = us[j] * keep + v_new * take
                    us[j] = r[j]
            else:
                for j in range(n):
                    r[j] = us[j] * keep + (vs[j] * keep + r[j] * take) * take
        elif write:
            for j in range(n):
                r[j] = vs[j] * keep + r[j] * take
                vs[j] = r[j]
        else:
            for j in range(n):
                r[j] = vs[j] * keep + r[j] * take
    if residual == _SUB:
        hs = h[lo : lo + n]
        for j in range(n):
            r[j] = r[j] - hs[j]
    elif residual == _ERROR:
        hs = h[lo : lo + n]
        for j in range(n):
            r[j] = hs[j] + r[j] * gamma


@nb.njit(inline="always", **JIT)
def update_tile(h, lo, n, update, beta, r, c):
    """The dense epilogue at elements ``lo .. lo+n-1`` from ``r[0:n]`` and ``c[0:n]``."""
    if update == _ADD:
        hs = h[lo : lo + n]
        for j in range(n):
            hs[j] = hs[j] + c[j] * beta
    elif update == _SET_ERROR:
        hs = h[lo : lo + n]
        for j in range(n):
            hs[j] = r[j] - c[j]


@nb.njit(inline="always", **JIT)
def selection_tile(idx, c, p, lo, n, plus_zero, out):
    """``out[0:n]`` = ``C(r)`` at elements ``lo .. lo+n-1``: ``c[q] (+ 0.0)`` at
    ``idx[q] - lo`` for the ascending ``idx`` from position ``p`` on, else 0. Returns
    the position after the tile."""
    for j in range(n):
        out[j] = 0.0
    k = idx.shape[0]
    while p < k and idx[p] < lo + n:
        out[idx[p] - lo] = c[p] + np.float32(0.0) if plus_zero else c[p]
        p += 1
    return p


# -- dense passes -------------------------------------------------------------------------
@nb.njit(parallel=True, **JIT)
def _residual_at(x, source, v, u, h, momentum, residual, keep, take, gamma, idx, scale,
                 scaled, out):
    """``out[j] = r[idx[j]] (* scale)`` without writing any state."""
    for j in nb.prange(idx.shape[0]):
        r = prologue_at(x, source, v, u, h, idx[j], momentum, residual, keep, take, gamma,
                        False)
        out[j] = r * scale if scaled else r


@nb.njit(parallel=True, **JIT)
def _step(x, source, v, u, h, momentum, residual, keep, take, gamma, update, beta, idx, c,
          plus_zero):
    """The dense fused pass of a sparsifier: momenta, ``r`` and the epilogue with
    ``c_i = c[j] (+ 0.0)`` at ``i = idx[j]`` (``idx`` ascending) and ``0`` elsewhere."""
    d = x.shape[0]
    for b in nb.prange((d + BLOCK - 1) // BLOCK):
        r = np.empty(TILE, dtype=np.float32)
        ct = np.empty(TILE, dtype=np.float32)
        p = first_at_least(idx, b * BLOCK)
        for lo in range(b * BLOCK, min(d, (b + 1) * BLOCK), TILE):
            n = min(TILE, d - lo)
            residual_tile(x, source, v, u, h, lo, n, momentum, residual, keep, take, gamma,
                          True, r)
            if update != _NONE:
                p = selection_tile(idx, c, p, lo, n, plus_zero, ct)
                update_tile(h, lo, n, update, beta, r, ct)


@nb.njit(parallel=True, **JIT)
def _zero(a):
    n = a.shape[0]
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
            a[i] = 0


@nb.njit(parallel=True, **JIT)
def _scatter_add(acc, idx, vals, scale, scaled):
    d = acc.shape[0]
    k = idx.shape[0]
    for b in nb.prange((k + BLOCK - 1) // BLOCK):
        for j in range(b * BLOCK, min(k, (b + 1) * BLOCK)):
            i = idx[j]
            if 0 <= i < d:  # never write out of bounds, whatever the caller passed
                acc[i] = acc[i] + (vals[j] * scale if scaled else vals[j])


# -- launchers ----------------------------------------------------------------------------
class Args:
    """The numpy views and codes a fused native kernel receives for ``fusion`` and ``x``
    (absent state tensors are empty arrays the kernel never reads)."""

    def __init__(self, fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor]):
        none = np.empty(0, dtype=np.float32)
        self.x = array(x)
        self.source = np.int64(SOURCES[x.dtype])
        self.v, self.u, self.h = (array(state[n].view(-1)) if n in state else none
                                  for n in ("v", "u", "h"))
        s = fusion.scalars()
        self.momentum = np.int64(fusion.momentum)
        self.residual = np.int64(fusion.residual_code)
        self.update = np.int64(fusion.update_code)
        self.keep, self.take = np.float32(s["keep"]), np.float32(s["take"])
        self.gamma, self.beta = np.float32(s["gamma"]), np.float32(s["beta"])

    def prologue(self):
        return (self.x, self.source, self.v, self.u, self.h, self.momentum, self.residual,
                self.keep, self.take, self.gamma)


def flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous 1-D CPU tensor (a copy only when it is not contiguous)."""
    if x.device.type != "cpu":
        raise ValueError(f"native CPU kernels take CPU tensors, got one on {x.device}")
    return x.reshape(-1) if x.is_contiguous() else x.contiguous().view(-1)


def residual_at(args: Args, idx: np.ndarray, scale: float, out: np.ndarray,
                parallel: bool = True) -> None:
    """``out = r[idx] * scale`` (fp32; no scaling when ``scale == 1``), state untouched."""
    threads(MISS_COST * idx.shape[0] if parallel else 0)
    _residual_at(*args.prologue(), idx, np.float32(scale), scale != 1.0, out)


def step(args: Args, idx: np.ndarray, c: np.ndarray, plus_zero: bool) -> None:
    """The dense fused pass (momenta and ``h``) with ``C(r)`` given at the ascending
    ``idx`` (``c + 0.0`` with ``plus_zero``, as a decoder accumulates it)."""
    threads(args.x.shape[0])
    _step(*args.prologue(), args.update, args.beta, idx, c, plus_zero)


def accumulator(out: torch.Tensor, add: bool) -> torch.Tensor:
    """The fp32 accumulator of decode-and-sum (:func:`.sparse.accumulator`)."""
    flat_out = out.view(-1)
    if flat_out.dtype == torch.float32:
        if not add:
            zero(flat_out)
        return flat_out
    if add:
        return flat_out.float()
    acc = torch.empty(flat_out.numel(), dtype=torch.float32)
    zero(acc)
    return acc


def zero(t: torch.Tensor) -> None:
    """Zero the contiguous CPU tensor ``t`` (in parallel when it is large)."""
    threads(t.numel())
    _zero(array(t).reshape(-1))


def finish(acc: torch.Tensor, out: torch.Tensor) -> None:
    """Round the accumulator into ``out`` when it is not ``out`` itself (fp16 / bf16)."""
    if acc.data_ptr() != out.data_ptr():
        out.view(-1).copy_(acc)


def scatter_add_arrays(acc: np.ndarray, idx: np.ndarray, vals: np.ndarray,
                       scale: float) -> None:
    """:func:`scatter_add` on numpy views."""
    threads(MISS_COST * idx.shape[0])
    _scatter_add(acc, idx, vals, np.float32(scale), scale != 1.0)


def scatter_add(acc: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, scale: float) -> None:
    """Twin of :func:`.sparse_torch.scatter_add`: ``acc[idx] += vals * scale`` (fp32,
    ``idx`` distinct; indices outside ``[0, d)`` are skipped, never written)."""
    scatter_add_arrays(array(acc), array(idx), array(vals), scale)
