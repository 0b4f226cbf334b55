"""Triton kernels of :mod:`.topk`: residual scratch, radix histograms, threshold counts,
and the two-pass band compaction that writes the payload and fuses the epilogue.

Exact mode: ``_residual_kernel`` (only when there is a prologue) -> ``_histogram_kernel``
on digits of 11, 10, 10 bits (the host reads each 2048-bin histogram, picks the bin of the
K-th largest key and stops early when that bin holds exactly the remaining count) ->
``_band_count_kernel`` (per block: sure and band counts) -> exclusive prefix sums of the
block counts (torch, on the device) -> ``_band_write_kernel`` (in-block prefix sums give
every selected element its slot; values go straight into the payload, indices into a
scratch that :mod:`.bitpack_triton` packs). Threshold mode replaces the histograms by
``_threshold_count_kernel`` (one pass counting every candidate threshold).
Launch with ``enable_fp_fusion=False``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bitpack import words_for
from .bitpack_triton import pack_triton
from .fusion import Fusion
from .fusion_triton import fusion_args, load_residual, store_state
from .topk import FRACTIONS, approx_plan, body_bytes, index_width, sample_thresholds

BLOCK = 2048
LEVELS = ((20, 11), (10, 10), (0, 10))  # (shift, bits) of the radix digits, top first
NT = len(FRACTIONS)


@triton.jit
def _key(r):
    """Order-preserving int32 image of |r| (see :func:`.sparse.key_image`)."""
    return r.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _residual_kernel(x_ptr, v_ptr, u_ptr, h_ptr, r_ptr, d, keep, take, gamma, beta,
                     MOMENTUM: tl.constexpr, RESIDUAL: tl.constexpr, UPDATE: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    r, v, u = load_residual(x_ptr, v_ptr, u_ptr, h_ptr, offs, mask, keep, take, gamma,
                            MOMENTUM, RESIDUAL)
    tl.store(r_ptr + offs, r, mask=mask)
    store_state(v_ptr, u_ptr, h_ptr, offs, mask, r, r, v, u, beta, MOMENTUM, 0)


@triton.jit
def _histogram_kernel(r_ptr, hist_ptr, d, prefix, SHIFT: tl.constexpr, BITS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """hist[b] += #{key : key >> (SHIFT + BITS) == prefix, (key >> SHIFT) % 2**BITS == b}."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    key = _key(tl.load(r_ptr + offs, mask=mask, other=0.0))
    in_bin = mask & ((key >> (SHIFT + BITS)) == prefix)
    digit = (key >> SHIFT) & ((1 << BITS) - 1)
    hist = tl.histogram(digit, 1 << BITS, mask=in_bin)
    tl.atomic_add(hist_ptr + tl.arange(0, 1 << BITS), hist)


@triton.jit
def _threshold_count_kernel(r_ptr, thr_ptr, counts_ptr, d, NT: tl.constexpr,
                            BLOCK: tl.constexpr):
    """counts[j] += #{key >= thr[j]}."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    key = _key(tl.load(r_ptr + offs, mask=mask, other=0.0))
    thr = tl.load(thr_ptr + tl.arange(0, NT))
    ge = (key[:, None] >= thr[None, :]) & mask[:, None]
    tl.atomic_add(counts_ptr + tl.arange(0, NT), tl.sum(ge.to(tl.int32), axis=0))


@triton.jit
def _band_count_kernel(r_ptr, cnt_ptr, d, nblocks, top, lo, BLOCK: tl.constexpr):
    """Per block: cnt[pid] = #{key > top}, cnt[nblocks + pid] = #{lo <= key <= top}."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    key = _key(tl.load(r_ptr + offs, mask=mask, other=0.0))
    sure = mask & (key > top)
    band = mask & (key >= lo) & (key <= top)
    tl.store(cnt_ptr + pid, tl.sum(sure.to(tl.int32), axis=0))
    tl.store(cnt_ptr + nblocks + pid, tl.sum(band.to(tl.int32), axis=0))


@triton.jit
def _band_write_kernel(r_ptr, base_ptr, vals_ptr, idx_ptr, v_ptr, u_ptr, h_ptr, d, nblocks,
                       top, lo, need, beta, UPDATE: tl.constexpr, BLOCK: tl.constexpr):
    """Compact the selected elements in index order and apply the epilogue with
    ``c = where(selected, r + 0.0, 0.0)``. ``base``: exclusive prefix sums of the blocks'
    band counts, then of their selected counts."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    key = _key(r)
    sure = mask & (key > top)
    band = mask & (key >= lo) & (key <= top)
    band_i = band.to(tl.int32)
    rank = tl.load(base_ptr + pid) + tl.cumsum(band_i, axis=0) - band_i
    sel = sure | (band & (rank < need))
    sel_i = sel.to(tl.int32)
    pos = tl.load(base_ptr + nblocks + pid) + tl.cumsum(sel_i, axis=0) - sel_i
    tl.store(vals_ptr + pos, r, mask=sel)
    tl.store(idx_ptr + pos, offs, mask=sel)
    if UPDATE != 0:
        c = tl.where(sel, r + 0.0, 0.0)
        store_state(v_ptr, u_ptr, h_ptr, offs, mask, r, c, r, r, beta, 0, UPDATE)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def _exact_plan(r: torch.Tensor, k: int) -> tuple[int, int, int]:
    """Radix select: the band plan ``(T, T, K - #{key > T})`` (or an early-exit plan)."""
    d = r.numel()
    grid = (triton.cdiv(d, BLOCK),)
    prefix, remaining = 0, k
    for shift, bits in LEVELS:
        hist = torch.zeros(1 << bits, dtype=torch.int32, device=r.device)
        _histogram_kernel[grid](r, hist, d, prefix, SHIFT=shift, BITS=bits, BLOCK=BLOCK)
        h = hist.cpu().to(torch.int64)
        ge = h.flip(0).cumsum(0).flip(0)
        b = int((ge >= remaining).sum()) - 1
        remaining -= int(ge[b + 1]) if b + 1 < h.numel() else 0
        prefix = (prefix << bits) | b
        if int(h[b]) == remaining:  # take the whole bin: every key >= prefix << shift
            lo = prefix << shift
            return (lo - 1, lo, 0)
    return (prefix, prefix, remaining)


def _approx_plan(r: torch.Tensor, k: int) -> tuple[int, int, int] | None:
    d = r.numel()
    thr = sample_thresholds(r, k).to(torch.int32).contiguous()
    counts = torch.zeros(NT, dtype=torch.int32, device=r.device)
    _threshold_count_kernel[(triton.cdiv(d, BLOCK),)](r, thr, counts, d, NT=NT, BLOCK=BLOCK)
    return approx_plan(thr.tolist(), counts.tolist(), d, k)


def _band_write(fusion: Fusion, r, state, plan, k: int, vals, idx) -> None:
    top, lo, need = plan
    d = r.numel()
    nblocks = triton.cdiv(d, BLOCK)
    cnt = torch.empty(2 * nblocks, dtype=torch.int32, device=r.device)
    _band_count_kernel[(nblocks,)](r, cnt, d, nblocks, top, lo, BLOCK=BLOCK)
    sure, band = cnt.to(torch.int64).split(nblocks)
    band_before = _exclusive_cumsum(band)
    taken = torch.minimum((need - band_before).clamp(min=0), band)
    sel = sure + taken
    if int(sel.sum()) != k:
        raise RuntimeError(f"topk: band select picked {int(sel.sum())} of {k} (internal error)")
    base = torch.cat([band_before, _exclusive_cumsum(sel)]).to(torch.int32)
    args = fusion_args(fusion)
    h = state.get("h", r)
    _band_write_kernel[(nblocks,)](
        r, base, vals, idx, r, r, h, d, nblocks, top, lo, need, args["beta"],
        UPDATE=args["UPDATE"], BLOCK=BLOCK, enable_fp_fusion=False)


def encode_triton(approx: bool, k: int, fusion: Fusion, x, state, payload) -> None:
    """Twin of :func:`.topk.encode_torch`."""
    d = x.numel()
    if fusion.is_identity and x.dtype == torch.float32:
        r = x
    else:
        r = torch.empty(d, dtype=torch.float32, device=x.device)
        v, u, h = (state.get(name, r) for name in ("v", "u", "h"))
        _residual_kernel[(triton.cdiv(d, BLOCK),)](
            x, v, u, h, r, d, **fusion_args(fusion), BLOCK=BLOCK, enable_fp_fusion=False)
    plan = None
    if k == d:
        plan = (-1, 0, 0)
    elif approx:
        plan = _approx_plan(r, k)
    if plan is None:
        plan = _exact_plan(r, k)
    vals = payload[: 4 * k].view(torch.float32)
    idx = torch.empty(k, dtype=torch.int32, device=x.device)
    _band_write(fusion, r, state, plan, k, vals, idx)
    w = index_width(d)
    if w:
        pack_triton(idx, w, payload[4 * k : 4 * (k + words_for(k, w))].view(torch.int32))
    payload[body_bytes(k, d) :].zero_()
