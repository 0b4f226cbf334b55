"""Triton kernels of :mod:`.topk`: residual scratch, radix histograms, threshold counts,
and the two-pass band compaction that writes the payload and fuses the epilogue.

Exact mode: ``_residual_kernel`` (only when there is a prologue) -> ``_histogram_kernel``
on digits of 11, 10, 10 bits, each followed by ``_select_bin_kernel`` (one program: picks
the bin of the K-th largest key and stops early when that bin holds exactly the remaining
count), so the whole plan stays on the device and an exact encode never reads the host ->
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
from .bitpack_triton import pack, unpack
from .fusion import Fusion
from .fusion_triton import fusion_args, load_residual, store_state
from .sparse_triton import scatter_add
from .topk import FRACTIONS, approx_plan, body_bytes, decode_rows, index_width, sample_thresholds

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


# the device-side plan: int64 [prefix, remaining, done, top, lo, need]
PREFIX, REMAINING, DONE, TOP, LO, NEED = range(6)


@triton.jit
def _histogram_kernel(r_ptr, hist_ptr, plan_ptr, d, SHIFT: tl.constexpr, BITS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """hist[b] += #{key : key >> (SHIFT + BITS) == prefix, (key >> SHIFT) % 2**BITS == b},
    unless the plan is already done; only nonzero bins are added (relaxed atomics)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    done = tl.load(plan_ptr + 2)
    prefix = tl.where(done == 0, tl.load(plan_ptr + 0), -1)  # -1: no key matches
    mask = offs < d
    key = _key(tl.load(r_ptr + offs, mask=mask, other=0.0)).to(tl.int64)
    in_bin = mask & ((key >> (SHIFT + BITS)) == prefix)
    digit = ((key >> SHIFT) & ((1 << BITS) - 1)).to(tl.int32)
    hist = tl.histogram(digit, 1 << BITS, mask=in_bin)
    tl.atomic_add(hist_ptr + tl.arange(0, 1 << BITS), hist, mask=hist != 0, sem="relaxed")


@triton.jit
def _select_bin_kernel(hist_ptr, plan_ptr, SHIFT: tl.constexpr, BITS: tl.constexpr,
                       LAST: tl.constexpr):
    """One radix level on the device: the bin ``b`` holding the ``remaining``-th largest key
    among those with the current prefix; extends the prefix, and writes the band plan when
    the bin holds exactly the remaining count (take it whole) or at the last level."""
    if tl.load(plan_ptr + 2) == 0:
        bins = tl.arange(0, 1 << BITS)
        h = tl.load(hist_ptr + bins).to(tl.int64)
        ge = tl.sum(h, axis=0) - tl.cumsum(h, axis=0) + h  # ge[b] = #{digit >= b}
        remaining = tl.load(plan_ptr + 1)
        b = tl.sum((ge >= remaining).to(tl.int64), axis=0) - 1
        h_b = tl.sum(tl.where(bins == b, h, 0), axis=0)
        remaining -= tl.sum(tl.where(bins == b, ge, 0), axis=0) - h_b  # minus #{digit > b}
        prefix = (tl.load(plan_ptr + 0) << BITS) | b
        tl.store(plan_ptr + 0, prefix)
        tl.store(plan_ptr + 1, remaining)
        if h_b == remaining:  # take the whole bin: every key >= prefix << SHIFT
            lo = prefix << SHIFT
            tl.store(plan_ptr + 3, lo - 1)
            tl.store(plan_ptr + 4, lo)
            tl.store(plan_ptr + 5, tl.zeros_like(lo))
            tl.store(plan_ptr + 2, tl.full((), 1, tl.int64))
        elif LAST:
            tl.store(plan_ptr + 3, prefix)
            tl.store(plan_ptr + 4, prefix)
            tl.store(plan_ptr + 5, remaining)
            tl.store(plan_ptr + 2, tl.full((), 1, tl.int64))


@triton.jit
def _threshold_count_kernel(r_ptr, thr_ptr, counts_ptr, d, NT: tl.constexpr,
                            BLOCK: tl.constexpr):
    """counts[j] += #{key >= thr[j]}."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    key = _key(tl.load(r_ptr + offs, mask=mask, other=0.0))
    thr = tl.load(thr_ptr + tl.arange(0, NT))
    ge = (key[:, None] >= thr[None, :]) & mask[:, None]
    tl.atomic_add(counts_ptr + tl.arange(0, NT), tl.sum(ge.to(tl.int32), axis=0), sem="relaxed")


@triton.jit
def _band_count_kernel(r_ptr, cnt_ptr, plan_ptr, d, nblocks, BLOCK: tl.constexpr):
    """Per block: cnt[pid] = #{key > top}, cnt[nblocks + pid] = #{lo <= key <= top}."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    top = tl.load(plan_ptr + 3)
    lo = tl.load(plan_ptr + 4)
    key = _key(tl.load(r_ptr + offs, mask=mask, other=0.0)).to(tl.int64)
    sure = mask & (key > top)
    band = mask & (key >= lo) & (key <= top)
    tl.store(cnt_ptr + pid, tl.sum(sure.to(tl.int32), axis=0))
    tl.store(cnt_ptr + nblocks + pid, tl.sum(band.to(tl.int32), axis=0))


@triton.jit
def _band_write_kernel(r_ptr, base_ptr, plan_ptr, vals_ptr, idx_ptr, v_ptr, u_ptr, h_ptr, d,
                       nblocks, beta, UPDATE: tl.constexpr, BLOCK: tl.constexpr):
    """Compact the selected elements in index order and apply the epilogue with
    ``c = where(selected, r + 0.0, 0.0)``. ``base``: exclusive prefix sums of the blocks'
    band counts, then of their selected counts."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    top = tl.load(plan_ptr + 3)
    lo = tl.load(plan_ptr + 4)
    need = tl.load(plan_ptr + 5)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    key = _key(r).to(tl.int64)
    sure = mask & (key > top)
    band = mask & (key >= lo) & (key <= top)
    band_i = band.to(tl.int64)
    rank = tl.load(base_ptr + pid) + tl.cumsum(band_i, axis=0) - band_i
    sel = sure | (band & (rank < need))
    sel_i = sel.to(tl.int64)
    pos = tl.load(base_ptr + nblocks + pid) + tl.cumsum(sel_i, axis=0) - sel_i
    tl.store(vals_ptr + pos, r, mask=sel)
    tl.store(idx_ptr + pos, offs, mask=sel)
    if UPDATE != 0:
        c = tl.where(sel, r + 0.0, 0.0)
        store_state(v_ptr, u_ptr, h_ptr, offs, mask, r, c, r, r, beta, 0, UPDATE)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def _fill_plan(plan: torch.Tensor, top: int, lo: int, need: int) -> torch.Tensor:
    """A plan known on the host, written with fills (no host-to-device copy of a list)."""
    for slot, value in ((TOP, top), (LO, lo), (NEED, need), (DONE, 1)):
        plan[slot].fill_(value)
    return plan


def _exact_plan(r: torch.Tensor, k: int, plan: torch.Tensor) -> torch.Tensor:
    """Radix select on the device, no host read: the band plan ``(T, T, K - #{key > T})``
    (or an early-exit plan) in ``plan``."""
    d = r.numel()
    grid = (triton.cdiv(d, BLOCK),)
    plan.zero_()
    plan[REMAINING].fill_(k)
    for level, (shift, bits) in enumerate(LEVELS):
        hist = torch.zeros(1 << bits, dtype=torch.int32, device=r.device)
        _histogram_kernel[grid](r, hist, plan, d, SHIFT=shift, BITS=bits, BLOCK=BLOCK)
        _select_bin_kernel[(1,)](hist, plan, SHIFT=shift, BITS=bits,
                                 LAST=level == len(LEVELS) - 1)
    return plan


def _approx_plan(r: torch.Tensor, k: int) -> tuple[int, int, int] | None:
    """The threshold mode's plan; its one host read (thresholds and counts together) is
    unavoidable: :func:`.topk.approx_plan` decides on the host whether the counts prove the
    contraction, and the exact select runs when they do not."""
    d = r.numel()
    thr = sample_thresholds(r, k).to(torch.int32).contiguous()
    counts = torch.zeros(NT, dtype=torch.int32, device=r.device)
    _threshold_count_kernel[(triton.cdiv(d, BLOCK),)](r, thr, counts, d, NT=NT, BLOCK=BLOCK)
    both = torch.cat([thr, counts]).tolist()  # the one host sync of an approx encode
    return approx_plan(both[:NT], both[NT:], d, k)


def _band_write(fusion: Fusion, r, state, plan: torch.Tensor, vals, idx) -> None:
    d = r.numel()
    nblocks = triton.cdiv(d, BLOCK)
    cnt = torch.empty(2 * nblocks, dtype=torch.int32, device=r.device)
    _band_count_kernel[(nblocks,)](r, cnt, plan, d, nblocks, BLOCK=BLOCK)
    sure, band = cnt.to(torch.int64).split(nblocks)
    band_before = _exclusive_cumsum(band)
    taken = torch.minimum((plan[NEED] - band_before).clamp(min=0), band)
    base = torch.cat([band_before, _exclusive_cumsum(sure + taken)])
    args = fusion_args(fusion)
    h = state.get("h", r)
    _band_write_kernel[(nblocks,)](
        r, base, plan, vals, idx, r, r, h, d, nblocks, args["beta"],
        UPDATE=args["UPDATE"], BLOCK=BLOCK, enable_fp_fusion=False)


def encode(approx: bool, k: int, fusion: Fusion, x, state, payload, scratch=None) -> None:
    """Twin of :func:`.topk_torch.encode` (``scratch`` is unused: buffers come from the
    caching allocator)."""
    d = x.numel()
    if fusion.is_identity and x.dtype == torch.float32:
        r = x
    else:
        r = torch.empty(d, dtype=torch.float32, device=x.device)
        v, u, h = (state.get(name, r) for name in ("v", "u", "h"))
        _residual_kernel[(triton.cdiv(d, BLOCK),)](
            x, v, u, h, r, d, **fusion_args(fusion), BLOCK=BLOCK, enable_fp_fusion=False)
    plan = torch.zeros(6, dtype=torch.int64, device=x.device)
    host_plan = (-1, 0, 0) if k == d else _approx_plan(r, k) if approx else None
    if host_plan is None:
        _exact_plan(r, k, plan)
    else:
        _fill_plan(plan, *host_plan)
    vals = payload[: 4 * k].view(torch.float32)
    idx = torch.empty(k, dtype=torch.int32, device=x.device)
    _band_write(fusion, r, state, plan, vals, idx)
    w = index_width(d)
    if w:
        pack(idx, w, payload[4 * k : 4 * (k + words_for(k, w))].view(torch.int32))
    payload[body_bytes(k, d) :].zero_()


def decode_sum(k: int, payloads, d: int, out, scale: float, add: bool, name: str) -> None:
    """Twin of :func:`.topk_torch.decode_sum`."""
    decode_rows(k, payloads, d, out, scale, add, name, unpack, scatter_add)
