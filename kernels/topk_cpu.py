"""Native CPU (numba) Top-K: the twin of :mod:`.topk_torch`'s ``encode`` and
``decode_sum``, payload bytes and state bit for bit (:mod:`.topk` is the spec: band
select, threshold plan, payload layout, index validation).

Both modes select among *candidates*: the elements whose key (:func:`.sparse_cpu.key`)
is at least a floor ``lo``, compacted in index order by one parallel pass over ``d``
(indices and fp32 bits, each block at its own offset of a ``d``-sized buffer that is
touched only where a candidate lands). With a prologue that pass is the fused one, a tile
at a time: ``r`` (vectorized stages), the momenta, ``h = r`` for the EF14 update, the
compaction. The floor is the key of the strided sample expected to have ``GUESS * K``
elements above it (the threshold mode needs the sample anyway); when fewer than ``K``
candidates reach it, a parallel histogram of the top 11 key bits over all of ``r`` gives
a floor sure to hold the ``K``-th largest key, and the compaction is redone.

- exact: ``T``, the ``K``-th largest candidate key, by a radix select (digits of 11, 10
  and 10 bits, per-part histograms merged) over the candidates; plan ``(T, T, K - #{> T})``.
- threshold: the twin's thresholds (the same sample keys at the same ranks), their counts
  over the candidates, and :func:`.topk.approx_plan`; the exact select when it declines.

The band select walks the candidates once, writing the values' bits straight into the
payload and the indices into a buffer that :mod:`.bitpack_cpu` packs. Epilogue:
``h[i] = r_i - (r_i + 0.0)`` at the selection (EF14; the rest was written in the pass), or
the ``add`` update as one dense pass (``h + c * beta`` everywhere, which the twin's sparse
epilogue amounts to), only at the selection when ``0 * beta`` is ``-0.0`` (then
``h + 0 * beta == h`` bit for bit). Kernels over ``d`` are parallel (``prange``), those
over the ~``1.5 K`` candidates mostly run on one thread. Every count is an integer, so
nothing depends on the thread count.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch

from . import bitpack_cpu
from .bitpack import words_for
from .fusion import Fusion, fp32
from .native import JIT, array, threads
from .sparse_cpu import (
    BLOCK,
    TILE,
    Args,
    accumulator,
    finish,
    first_at_least,
    flat,
    key,
    residual_at,
    residual_tile,
    selection_tile,
    update_tile,
    zero,
)
from .topk import (
    FRACTIONS,
    GUESS,
    SAMPLE,
    approx_plan,
    body_bytes,
    check_indices,
    index_width,
    sample_rank,
)

_MAG = np.int32(0x7FFFFFFF)
_SET_ERROR = 2  # fusion.Update.ERROR
_ADD = 1  # fusion.Update.ADD
_GUESS_AT = FRACTIONS.index(GUESS)
_TOP_SHIFT = 20  # the first radix digit: key >> 20 (11 bits)
_PART = 1 << 14  # keys per part of the radix select's per-part histograms
#: the radix select over candidates runs on one thread below ``_SMALL * PARALLEL_MIN`` of them:
#: a fraction of a millisecond there, while a parallel region on a loaded machine can cost
#: tens of milliseconds
_SMALL = 4


# -- candidates ---------------------------------------------------------------------------
@nb.njit(parallel=True, **JIT)
def _compact(bits, lo, cidx, cbits, counts):
    """Per block: the indices and fp32 bits of the elements whose key is ``>= lo``, in
    index order, at the block's own offset of ``cidx`` / ``cbits``; ``counts[block]`` how
    many."""
    d = bits.shape[0]
    for b in nb.prange(counts.shape[0]):
        n = b * BLOCK
        for i in range(b * BLOCK, min(d, (b + 1) * BLOCK)):
            if bits[i] & _MAG >= lo:
                cidx[n] = i
                cbits[n] = bits[i]
                n += 1
        counts[b] = n - b * BLOCK


@nb.njit(parallel=True, **JIT)
def _residual_compact(x, source, v, u, h, momentum, residual, keep, take, gamma, update, r,
                      lo, cidx, cbits, counts):
    """:func:`_compact` fused with the prologue, a tile at a time: writes ``r``, the
    momenta and, for the EF14 update, ``h = r`` (the selection is fixed afterwards)."""
    d = x.shape[0]
    for b in nb.prange(counts.shape[0]):
        rt = np.empty(TILE, dtype=np.float32)
        cnt = b * BLOCK
        for t0 in range(b * BLOCK, min(d, (b + 1) * BLOCK), TILE):
            n = min(TILE, d - t0)
            residual_tile(x, source, v, u, h, t0, n, momentum, residual, keep, take, gamma,
                          True, rt)
            rs = r[t0 : t0 + n]
            for j in range(n):
                rs[j] = rt[j]
            if update == _SET_ERROR:
                hs = h[t0 : t0 + n]
                for j in range(n):
                    hs[j] = rt[j]
            for j in range(n):
                if key(rt[j]) >= lo:
                    cidx[cnt] = t0 + j
                    cbits[cnt] = np.float32(rt[j]).view(np.int32)
                    cnt += 1
        counts[b] = cnt - b * BLOCK


@nb.njit(**JIT)
def _gather(cidx, cbits, counts, out_idx, out_bits):
    """The blocks' candidates, contiguous (one thread: a copy of the few candidates)."""
    s = 0
    for b in range(counts.shape[0]):
        for t in range(counts[b]):
            out_idx[s] = cidx[b * BLOCK + t]
            out_bits[s] = cbits[b * BLOCK + t]
            s += 1


def _parts(m: int) -> int:
    return max(1, min(256, -(-m // _PART)))


# -- selection ----------------------------------------------------------------------------
@nb.njit(parallel=True, **JIT)
def _radix(keys, k, levels, parts):
    """Radix select of the ``k``-th largest of ``keys`` (>= 0, int32) over the first
    ``levels`` digits (11, 10, 10 bits): ``(prefix, remaining)``, the digits' prefix of
    the ``k``-th largest and ``k - #{keys above that prefix's bin}``."""
    m = keys.shape[0]
    prefix = 0
    remaining = k
    for level in range(levels):
        shift = 20 - 10 * level
        width = 11 if level == 0 else 10
        nbins = 1 << width
        hist = np.zeros((parts, nbins), dtype=np.int64)
        for p in nb.prange(parts):
            for j in range(p * m // parts, (p + 1) * m // parts):
                kk = keys[j] & _MAG
                if (kk >> (shift + width)) == prefix:
                    hist[p, (kk >> shift) & (nbins - 1)] += 1
        total = hist.sum(axis=0)
        above = 0
        b = nbins - 1
        while b > 0 and above + total[b] < remaining:
            above += total[b]
            b -= 1
        remaining -= above
        prefix = (prefix << width) | b
    return prefix, remaining


@nb.njit(**JIT)
def _count_at_least(bits, thresholds):
    """``#{key >= t}`` for each threshold ``t``."""
    nt = thresholds.shape[0]
    counts = np.zeros(nt, dtype=np.int64)
    for j in range(bits.shape[0]):
        kk = bits[j] & _MAG
        for t in range(nt):
            if kk >= thresholds[t]:
                counts[t] += 1
    return counts


@nb.njit(**JIT)
def _band_select(cidx, cbits, top, lo, need, sel, vals):
    """The band select (:mod:`.topk`) over the candidates, in index order: ``sel`` gets the
    indices, ``vals`` the values' bits. Returns how many were selected (``len(sel)``
    unless the plan is inconsistent; nothing is written past ``sel``)."""
    k = sel.shape[0]
    pos = 0
    rank = 0
    for j in range(cbits.shape[0]):
        kk = cbits[j] & _MAG
        take = kk > top
        if not take and kk >= lo:
            take = rank < need
            rank += 1
        if take:
            if pos < k:
                sel[pos] = cidx[j]
                vals[pos] = cbits[j]
            pos += 1
    return pos


# -- epilogue -----------------------------------------------------------------------------
@nb.njit(**JIT)
def _error_at(h, sel, vals):
    """EF14 at the selection: ``h = r - (r + 0.0)`` (``h = r`` elsewhere is written)."""
    for j in range(sel.shape[0]):
        h[sel[j]] = vals[j] - (vals[j] + np.float32(0.0))


@nb.njit(parallel=True, **JIT)
def _add_dense(h, sel, vals, beta):
    """``h += c * beta`` everywhere, ``c = r + 0.0`` at the ascending ``sel``, else 0."""
    d = h.shape[0]
    for b in nb.prange((d + BLOCK - 1) // BLOCK):
        ct = np.empty(TILE, dtype=np.float32)
        p = first_at_least(sel, b * BLOCK)
        for t0 in range(b * BLOCK, min(d, (b + 1) * BLOCK), TILE):
            n = min(TILE, d - t0)
            p = selection_tile(sel, vals, p, t0, n, True, ct)
            update_tile(h, t0, n, _ADD, beta, ct, ct)


@nb.njit(**JIT)
def _add_at(h, sel, vals, beta):
    """``h += (r + 0.0) * beta`` at the selection (``0 * beta`` is ``-0.0`` elsewhere)."""
    for j in range(sel.shape[0]):
        i = sel[j]
        h[i] = h[i] + (vals[j] + np.float32(0.0)) * beta


# -- encode -------------------------------------------------------------------------------
def _work(scratch: dict | None, name: str, n: int, dtype: torch.dtype) -> np.ndarray:
    """A reusable buffer of at least ``n`` elements (the largest asked for so far)."""
    t = None if scratch is None else scratch.get(name)
    if t is None or t.numel() < n or t.dtype != dtype:
        t = torch.empty(n, dtype=dtype)
        if scratch is not None:
            scratch[name] = t
    return array(t[:n])


class _Candidates:
    """Indices and fp32 bits (int32, ascending index) of the elements with key ``>= lo``."""

    def __init__(self, d: int, scratch: dict | None):
        self.nblocks = -(-d // BLOCK)
        self.cidx = _work(scratch, "cpu_cand_idx", d, torch.int32)
        self.cbits = _work(scratch, "cpu_cand_bits", d, torch.int32)
        self.counts = np.empty(self.nblocks, dtype=np.int64)

    def compact(self, bits: np.ndarray, lo: int, args: Args | None = None,
                r: np.ndarray | None = None) -> None:
        """From the fp32 bits of ``r``, or with ``args`` from the fused prologue pass that
        writes ``r`` and the state."""
        threads(bits.shape[0])
        if args is None:
            _compact(bits, np.int32(lo), self.cidx, self.cbits, self.counts)
        else:
            _residual_compact(*args.prologue(), args.update, r, np.int32(lo), self.cidx,
                              self.cbits, self.counts)
        self.m = int(self.counts.sum())
        self.idx = np.empty(self.m, dtype=np.int32)
        self.bits = np.empty(self.m, dtype=np.int32)
        _gather(self.cidx, self.cbits, self.counts, self.idx, self.bits)


def _thresholds(args: Args, d: int, k: int) -> list[int]:
    """:func:`.topk.sample_thresholds`: keys of ``r[::stride]`` at the fractions' ranks
    (computed from the state before the pass writes it, so the same ``r``); order
    statistics by ``np.partition`` equal those of the twin's sort."""
    stride = max(1, d // SAMPLE)
    pos = np.arange(0, d, stride, dtype=np.int64)
    sample = np.empty(pos.shape[0], dtype=np.float32)
    residual_at(args, pos, 1.0, sample, parallel=False)  # small: one thread
    keys = sample.view(np.int32) & _MAG
    n = keys.shape[0]
    at = [n - 1 - sample_rank(n, stride, k, f) for f in FRACTIONS]  # ascending positions
    asc = np.partition(keys, sorted(set(at)))
    return [int(asc[a]) for a in at]


def _top_floor(bits: np.ndarray, k: int) -> int:
    """A key floor with at least ``k`` keys at or above it: the bin of the top 11 bits
    holding the ``k``-th largest key (a parallel histogram over all of ``r``)."""
    threads(bits.shape[0])
    prefix, _ = _radix(bits, np.int64(k), 1, np.int64(_parts(bits.shape[0])))
    return int(prefix) << _TOP_SHIFT


def _plan(approx: bool, k: int, d: int, cand: _Candidates, bits: np.ndarray,
          thresholds: list[int] | None) -> tuple[int, int, int]:
    """The band plan of :func:`.topk_torch.encode`, from the candidates above the guess."""
    if k == d:
        return (-1, 0, 0)
    if approx:
        n = _GUESS_AT + 1
        if cand.m < k:
            n = len(FRACTIONS)
            cand.compact(bits, thresholds[-1])
        thr = thresholds[:n]
        counts = _count_at_least(cand.bits, np.array(thr, dtype=np.int32)).tolist()
        plan = approx_plan(thr, counts, d, k)
        if plan is not None:
            return plan
    if cand.m < k:
        cand.compact(bits, _top_floor(bits, k))
    threads(cand.m // _SMALL)
    t, need = _radix(cand.bits, np.int64(k), 3, np.int64(_parts(cand.m)))
    return (int(t), int(t), int(need))


def _check(k: int, d: int, payload: torch.Tensor) -> None:
    if not 1 <= k <= d:
        raise ValueError(f"topk: K must be in [1, {d}], got {k}")
    if payload.dtype != torch.uint8 or payload.dim() != 1 or not payload.is_contiguous() \
            or payload.numel() < body_bytes(k, d) or payload.device.type != "cpu":
        raise ValueError(f"topk: payload must be a contiguous 1-D uint8 CPU tensor of at least "
                         f"{body_bytes(k, d)} bytes, got {payload.dtype} {tuple(payload.shape)}")


def encode(approx: bool, k: int, fusion: Fusion, x: torch.Tensor, state, payload: torch.Tensor,
           scratch: dict | None = None) -> None:
    """Twin of :func:`.topk_torch.encode`: the Top-K payload of ``r = prologue(x)`` and the
    epilogue with ``C(r)``; ``scratch`` keeps the work buffers between calls."""
    x = flat(x)
    d = x.numel()
    _check(k, d, payload)
    args = Args(fusion, x, state)
    direct = fusion.is_identity and x.dtype == torch.float32
    r = args.x if direct else _work(scratch, "cpu_r", d, torch.float32)
    bits = r.view(np.int32)
    thresholds = _thresholds(args, d, k) if k < d and (approx or d > SAMPLE) else None
    lo = thresholds[_GUESS_AT] if thresholds is not None else 0
    cand = _Candidates(d, scratch)
    cand.compact(bits, lo, None if direct else args, r)
    top, lo, need = _plan(approx, k, d, cand, bits, thresholds)

    sel = np.empty(k, dtype=np.int32)
    vals = array(payload[: 4 * k].view(torch.int32))  # the values' bits, straight in
    got = _band_select(cand.idx, cand.bits, np.int32(top), np.int32(lo), np.int64(need),
                       sel, vals)
    if got != k:
        raise RuntimeError(f"topk: band select picked {got} of {k} (internal error)")
    w = index_width(d)
    threads(k)
    if w:
        bitpack_cpu.pack(sel, w, array(payload[4 * k : 4 * (k + words_for(k, w))]
                                       .view(torch.int32)))
    zero(payload[body_bytes(k, d) :])

    vals = vals.view(np.float32)
    if fusion.update == "error":
        _error_at(args.h, sel, vals)
    elif fusion.update == "add":
        zero_term = 0.0 * fp32(fusion.beta)
        if zero_term == 0 and math.copysign(1.0, zero_term) < 0:  # h + (-0.0) == h
            _add_at(args.h, sel, vals, args.beta)
        else:
            threads(d)
            _add_dense(args.h, sel, vals, args.beta)


# -- decode -------------------------------------------------------------------------------
@nb.njit(parallel=True, **JIT)
def _read_indices(words, k, width, d, idx):
    """Unpack every row's index fields into ``idx``; the first row whose fields are not
    strictly increasing in ``[0, d)``, or -1."""
    n = words.shape[0]
    nwords = words.shape[1]
    nblocks = (k + BLOCK - 1) // BLOCK
    bad = np.zeros(n * nblocks, dtype=np.uint8)
    for item in nb.prange(n * nblocks):
        row = item // nblocks
        j0 = (item % nblocks) * BLOCK
        w = words[row]
        prev = np.int64(bitpack_cpu.field(w, j0 - 1, width, nwords)) if j0 > 0 else -1
        for j in range(j0, min(k, j0 + BLOCK)):
            f = np.int64(bitpack_cpu.field(w, j, width, nwords))
            if f >= d or f <= prev:
                bad[item] = 1
            idx[row, j] = f
            prev = f
    for item in range(n * nblocks):
        if bad[item]:
            return item // nblocks
    return -1


@nb.njit(parallel=True, **JIT)
def _accumulate(acc, idx, vals, scale, scaled):
    """Rows in order: ``acc[idx[row, j]] += vals[row, j] (* scale)``."""
    d = acc.shape[0]
    n, k = idx.shape
    for row in range(n):
        for b in nb.prange((k + BLOCK - 1) // BLOCK):
            for j in range(b * BLOCK, min(k, (b + 1) * BLOCK)):
                i = idx[row, j]
                if 0 <= i < d:
                    v = vals[row, j]
                    acc[i] = acc[i] + (v * scale if scaled else v)


def decode_sum(k: int, payloads: torch.Tensor, d: int, out: torch.Tensor, scale: float,
               add: bool, name: str = "topk") -> None:
    """Twin of :func:`.topk_torch.decode_sum`: validates every row (nothing is written when one
    is corrupt), then ``out (+)= scale * sum_i C_i`` in fp32, rows in order."""
    n = payloads.shape[0]
    threads(n * k)
    w = index_width(d)
    idx = np.zeros((n, k), dtype=np.int64)
    if w:
        words = payloads[:, 4 * k : 4 * (k + words_for(k, w))].view(torch.int32)
        row = _read_indices(array(words), np.int64(k), np.int64(w), np.int64(d), idx)
        if row >= 0:  # the spec's check raises its error for the same first bad row
            check_indices(torch.from_numpy(idx), d, name, defer=False)  # on the host
            raise RuntimeError(f"{name}: row {row} failed the native index check only "
                               "(internal error)")
    acc = accumulator(out, add)
    _accumulate(array(acc), idx, array(payloads[:, : 4 * k].view(torch.float32)),
                np.float32(scale), scale != 1.0)
    finish(acc, out)
