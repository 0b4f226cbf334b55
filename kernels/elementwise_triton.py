"""Triton kernels of :mod:`.elementwise`: one fused encode kernel and one
decode-and-sum kernel for every elementwise format (``KIND`` is a :class:`.format.Kind`
constexpr)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import format as fmt_spec
from .bitpack import words_for
from .bitpack_triton import load_field, store_group_words
from .elementwise import Header
from .format import Format, Kind
from .fusion import Fusion, fp32
from .fusion_triton import fusion_args, load_residual, store_state
from .philox_triton import uniform
from .treesum_triton import segment_sums, sums_and_rescue

FP32 = tl.constexpr(int(Kind.FP32))
FP16 = tl.constexpr(int(Kind.FP16))
BF16 = tl.constexpr(int(Kind.BF16))
SIGN = tl.constexpr(int(Kind.SIGN))
SSIGN = tl.constexpr(int(Kind.SSIGN))
QSGD = tl.constexpr(int(Kind.QSGD))
TINY = tl.constexpr(fmt_spec.TINY)
TINY_SCALE = tl.constexpr(fmt_spec.TINY_SCALE)
HUGE = tl.constexpr(fmt_spec.HUGE)
HUGE_SCALE = tl.constexpr(fmt_spec.HUGE_SCALE)
FP32_MAX = tl.constexpr(fmt_spec.FP32_MAX)
PREV_MAX = tl.constexpr(fmt_spec.PREV_MAX)
UNDO_ABS = tl.constexpr(fmt_spec.UNDO_ABS)
UNDO_SQUARE = tl.constexpr(fmt_spec.UNDO_SQUARE)
INF = tl.constexpr(float("inf"))

GROUPS = 32  # 32-element groups per encode program
BLOCK = 1024  # elements per decode program


@triton.jit
def bf16_bits(x):
    """Bits of ``x`` (fp32) rounded to bf16, nearest even, as int64 in [0, 2**16): done in
    integers because Triton's CPU interpreter does not round bf16 casts correctly."""
    bits = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    hi = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, hi)


@triton.jit
def _header_kernel(sums_ptr, rescue_ptr, header_ptr, nseg, d_f, levels, KIND: tl.constexpr,
                   MAXNORM: tl.constexpr, RESCUE: tl.constexpr, BLOCK: tl.constexpr):
    """``header[b]`` from segment ``b``'s sum, or from its rescue sum where the sum is ``+inf``
    (:mod:`.format`, "Overflow"; the twin's ``header_values``)."""
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = b < nseg
    s = tl.load(sums_ptr + b, mask=live, other=0.0)
    inf = s == INF
    w = tl.load(rescue_ptr + b, mask=live & inf, other=0.0)  # read only where s is inf
    if KIND == SIGN:
        head = tl.math.div_rn(s, d_f)
        if RESCUE:
            big = tl.math.div_rn(w, d_f) * UNDO_ABS
            big = tl.where((big == INF) & (w < INF), FP32_MAX, big)
            head = tl.where(inf, big, head)
    else:
        if MAXNORM:
            head = s
        else:
            head = tl.math.sqrt_rn(s)
            if RESCUE:
                head = tl.where(inf, tl.math.sqrt_rn(w) * UNDO_SQUARE, head)
        if KIND == QSGD:  # the top level S * (n_b / S) must stay finite
            top = tl.math.div_rn(head, levels) * levels
            head = tl.where((top == INF) & (head < INF), PREV_MAX, head)
    tl.store(header_ptr + b, head, mask=live)


@triton.jit(do_not_specialize=["seed"])
def _encode_kernel(x_ptr, v_ptr, u_ptr, h_ptr, head_ptr, words_ptr, d, nh, ncw, seed: tl.int64,
                   levels, bucket, keep, take, gamma, beta,
                   MOMENTUM: tl.constexpr, RESIDUAL: tl.constexpr, UPDATE: tl.constexpr,
                   KIND: tl.constexpr, W: tl.constexpr, G: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = (pid * G + tl.arange(0, G))[:, None] * 32 + tl.arange(0, 32)[None, :]
    mask = offs < d
    r, v, u = load_residual(x_ptr, v_ptr, u_ptr, h_ptr, offs, mask, keep, take, gamma,
                            MOMENTUM, RESIDUAL)
    neg = r < 0
    if KIND == FP32:
        c = r
        tl.store(words_ptr + offs, r.to(tl.int32, bitcast=True), mask=mask)
    elif KIND == FP16 or KIND == BF16:
        half_ptr = words_ptr.to(tl.pointer_type(tl.int16))
        if KIND == FP16:
            low = tl.minimum(tl.maximum(r, -65504.0), 65504.0).to(tl.float16)
            tl.store(half_ptr + offs, low.to(tl.int16, bitcast=True), mask=mask)
            c = low.to(tl.float32)
        else:
            hi = bf16_bits(r)
            tl.store(half_ptr + offs, hi.to(tl.int16), mask=mask)
            c = (hi << 16).to(tl.uint32).to(tl.float32, bitcast=True)
    else:
        if KIND == SIGN:  # s = sum|r| / d
            scale = tl.load(head_ptr)
            c = tl.where(neg, -scale, scale)
            codes = neg.to(tl.int64)
            if pid == 0:
                tl.store(words_ptr, scale.to(tl.int32, bitcast=True))
        elif KIND == SSIGN:  # n = ||r||, P(+) = 1/2 + r / (2n)
            norm = tl.load(head_ptr)
            tiny = tl.where(norm < TINY, TINY_SCALE, tl.where(norm >= HUGE, HUGE_SCALE, 1.0))
            safe = tl.where(norm > 0, norm * tiny, 1.0)
            half_inv = tl.where(norm > 0, tl.math.div_rn(tl.zeros_like(norm) + 0.5, safe), 0.0)
            rnd = uniform(seed, offs)
            neg = rnd >= 0.5 + (r * tiny) * half_inv
            c = tl.where(neg, -norm, norm)
            codes = neg.to(tl.int64)
            if pid == 0:
                tl.store(words_ptr, norm.to(tl.int32, bitcast=True))
        else:  # qsgd
            b = offs // bucket
            norm = tl.load(head_ptr + b, mask=mask, other=0.0)
            tiny = tl.where(norm < TINY, TINY_SCALE, tl.where(norm >= HUGE, HUGE_SCALE, 1.0))
            safe = tl.where(norm > 0, norm * tiny, 1.0)
            inv = tl.where(norm > 0, tl.math.div_rn(levels, safe), 0.0)
            step = tl.math.div_rn(norm, levels)
            a = (tl.abs(r) * tiny) * inv
            floor = tl.floor(a)
            rnd = uniform(seed, offs)
            level = tl.minimum(floor + tl.where(rnd < a - floor, 1.0, 0.0), levels)
            c = level * step
            c = tl.where(neg, -c, c)
            codes = level.to(tl.int64) | (neg.to(tl.int64) << (W - 1))
            first = mask & (offs % bucket == 0)
            tl.store(words_ptr + b, norm.to(tl.int32, bitcast=True), mask=first)
        codes = tl.where(mask, codes, 0)
        store_group_words(codes, words_ptr + nh, pid * G, ncw, G, W)
    store_state(v_ptr, u_ptr, h_ptr, offs, mask, r, c, v, u, beta, MOMENTUM, UPDATE)


@triton.jit
def _decode_sum_kernel(words_ptr, out_ptr, n, d, row_words, nh, ncw, levels, bucket, scale,
                       KIND: tl.constexpr, W: tl.constexpr, HAS_SCALE: tl.constexpr,
                       ADD: tl.constexpr, OUT_BF16: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if ADD and OUT_BF16:
        bits = tl.load(out_ptr.to(tl.pointer_type(tl.int16)) + offs, mask=mask, other=0)
        acc = ((bits.to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)
    elif ADD:
        acc = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for i in range(n):
        row = words_ptr + (tl.full((), 0, tl.int64) + i) * row_words
        if KIND == FP32:
            c = tl.load(row + offs, mask=mask, other=0).to(tl.float32, bitcast=True)
        elif KIND == FP16:
            bits = tl.load(row.to(tl.pointer_type(tl.int16)) + offs, mask=mask, other=0)
            c = bits.to(tl.float16, bitcast=True).to(tl.float32)
        elif KIND == BF16:  # bf16 -> fp32 is a 16-bit shift (exact)
            bits = tl.load(row.to(tl.pointer_type(tl.int16)) + offs, mask=mask, other=0)
            c = ((bits.to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)
        else:
            field = load_field(row + nh, offs, ncw, W)
            if KIND == QSGD:
                b = offs // bucket
                norm = tl.load(row + b, mask=mask, other=0).to(tl.float32, bitcast=True)
                level = (field & ((1 << (W - 1)) - 1)).to(tl.float32)
                c = level * tl.math.div_rn(norm, levels)
                c = tl.where((field >> (W - 1)) == 1, -c, c)
            else:
                s = tl.load(row).to(tl.float32, bitcast=True)
                c = tl.where(field == 1, -s, s)
        if HAS_SCALE:
            c = c * scale
        acc = acc + c
    if OUT_BF16:
        out16 = out_ptr.to(tl.pointer_type(tl.int16))
        tl.store(out16 + offs, bf16_bits(acc).to(tl.int16), mask=mask)
    else:
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _int32_words(payload: torch.Tensor) -> torch.Tensor:
    return payload.view(torch.int32)


def header(fmt: Format, fusion: Fusion, x, state) -> Header:
    """The :class:`.elementwise.Header` of ``prologue(x)``: the stats pass (with the rescue
    sums in the same pass, :mod:`.format`) and one small kernel over the segments."""
    d = x.numel()
    seglen, op, rescue_scale = fmt.segment(d), fmt.stats_op(), fmt.rescue_scale()
    if rescue_scale is None:
        sums, rescue = segment_sums(fusion, x, state, seglen, op), None
    else:
        sums, rescue = sums_and_rescue(fusion, x, state, seglen, op, rescue_scale)
    return Header(fmt, d, header_values(fmt, d, sums, rescue), sums, rescue)


def header_values(fmt: Format, d: int, sums, rescue) -> torch.Tensor:
    """Twin of :func:`.elementwise_torch.header_values` (``d`` elements)."""
    nseg = sums.numel()
    values = torch.empty_like(sums)
    _header_kernel[(triton.cdiv(nseg, BLOCK),)](
        sums, rescue if rescue is not None else sums, values, nseg, fp32(float(d)),
        fp32(float(fmt.levels)), KIND=int(fmt.kind), MAXNORM=fmt.maxnorm,
        RESCUE=rescue is not None, BLOCK=BLOCK, enable_fp_fusion=False)
    return values


def encode(fmt: Format, fusion: Fusion, x, state, seed, payload, check=None) -> None:
    """Twin of :func:`.elementwise_torch.encode`."""
    d = x.numel()
    head = None
    if fmt.packed:
        head = header(fmt, fusion, x, state)
        if check is not None:
            check(head)  # nothing is written before this
    v, u, h = (state.get(k, x) for k in ("v", "u", "h"))
    grid = (triton.cdiv(d, 32 * GROUPS),)
    _encode_kernel[grid](
        x, v, u, h, head.values if head is not None else x, _int32_words(payload), d,
        fmt.header_words(d), words_for(d, fmt.width), seed, fp32(float(fmt.levels)),
        max(fmt.bucket, 1), **fusion_args(fusion), KIND=int(fmt.kind), W=fmt.width, G=GROUPS,
        enable_fp_fusion=False)


def decode_sum(fmt: Format, payloads, d: int, out, scale: float, add: bool) -> None:
    """Twin of :func:`.elementwise_torch.decode_sum`."""
    n, nbytes = payloads.shape
    words = payloads.view(torch.int32)
    _decode_sum_kernel[(triton.cdiv(d, BLOCK),)](
        words, out.view(-1), n, d, nbytes // 4, fmt.header_words(d), words_for(d, fmt.width),
        fp32(float(fmt.levels)), max(fmt.bucket, 1), fp32(scale), KIND=int(fmt.kind), W=fmt.width,
        HAS_SCALE=scale != 1.0, ADD=add,
        OUT_BF16=out.dtype == torch.bfloat16, BLOCK=BLOCK, enable_fp_fusion=False)

