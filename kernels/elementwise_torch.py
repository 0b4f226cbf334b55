"""Torch twin of :mod:`.elementwise` (the codes are specified in :mod:`.format`): the
readable reference every other backend is proven equal to.

The tensor is walked in cache-sized chunks (``CHUNK`` elements) after one stats pass for
the formats with a header; chunking changes no bit (tested).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from . import philox_torch
from .bitpack import words_for
from .bitpack_torch import pack_words, unpack_fields
from .elementwise import Header
from .format import (
    FP16_MAX,
    FP32_MAX,
    HUGE,
    HUGE_SCALE,
    PREV_MAX,
    TINY,
    TINY_SCALE,
    UNDO_ABS,
    UNDO_SQUARE,
    Format,
    Kind,
)
from .fusion import Fusion
from .fusion_torch import epilogue, prologue
from .treesum import Op
from .treesum_torch import op_terms, tree_sum_rows


def _f32(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _div(a, b) -> torch.Tensor:
    """Correctly rounded fp32 ``a / b`` (via fp64: exact enough that rounding once more to
    fp32 is still correct rounding). Used on per-segment scalars only."""
    a = a.double() if isinstance(a, torch.Tensor) else a
    return (a / b.double()).float()


def _sqrt(a: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 square root (torch's CPU sqrt is not, in the last bit)."""
    return a.double().sqrt().float()


def to_bf16(r: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16, round to nearest even, in integer arithmetic (what the Triton kernel
    does too, since Triton's interpreter does not round bf16 conversions correctly)."""
    bits = r.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = torch.where(torch.isnan(r), 0x7FC0, rounded)
    return (rounded - ((rounded >> 15) << 16)).to(torch.int16).view(torch.bfloat16)


CHUNK = 32768  # elements per step of the torch path: cache-sized, one thread's grain


def _bucket_values(values: torch.Tensor, fmt: Format, lo: int, hi: int) -> torch.Tensor:
    """Per-bucket ``values`` at elements ``lo .. hi-1``."""
    if values.numel() == 1:
        return values
    first = lo // fmt.bucket
    last = -(-hi // fmt.bucket)
    spread = values[first:last].repeat_interleave(fmt.bucket)
    return spread[lo - first * fmt.bucket : hi - first * fmt.bucket]


def uniforms(seed: int, lo: int, hi: int, device) -> torch.Tensor:
    """Element ``lo .. hi-1``'s uniforms (the draw behind each stochastic code)."""
    return philox_torch.uniforms(seed, lo, hi, device)


def header_values(fmt: Format, sums: torch.Tensor, rescue: torch.Tensor | None) -> torch.Tensor:
    """The header (fp32, per segment) from the segment sums and, where a plain sum is
    ``+inf``, the rescue sums (:mod:`.format`, "Overflow"; ``rescue`` may be ``None`` when
    no sum is)."""
    inf = sums == float("inf")
    if fmt.kind == Kind.SIGN:
        s = _div(sums, _f32(float(fmt.numel)))
        if rescue is None:
            return s
        big = _div(rescue, _f32(float(fmt.numel))) * UNDO_ABS  # exact unless it overflows
        big = torch.where((big == float("inf")) & (rescue < float("inf")), FP32_MAX, big)
        return torch.where(inf, big, s)
    if fmt.maxnorm:
        norm = sums
    else:
        norm = _sqrt(sums)
        if rescue is not None:
            norm = torch.where(inf, _sqrt(rescue) * UNDO_SQUARE, norm)
    if fmt.kind == Kind.QSGD:  # the top level S * (n_b / S) must stay finite
        levels = _f32(float(fmt.levels))
        top = _div(norm, levels) * levels
        norm = torch.where((top == float("inf")) & (norm < float("inf")), PREV_MAX, norm)
    return norm


def header_stats(fmt: Format, header: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-segment quantities of the header, computed once per encode: the header itself
    (:func:`header_values`) and the factors each element of the segment is scaled by."""
    if fmt.kind == Kind.SIGN:
        return {"header": header}
    norm = header
    tiny = torch.where(norm < TINY, TINY_SCALE,  # format.py: TINY, HUGE
                       torch.where(norm >= HUGE, HUGE_SCALE, 1.0)).to(torch.float32)
    if fmt.kind == Kind.SSIGN:
        return {"header": norm, "tiny": tiny,
                "half_inv": torch.where(norm > 0, _div(0.5, norm * tiny), 0.0)}
    levels = _f32(float(fmt.levels))
    return {"header": norm, "tiny": tiny,
            "inv": torch.where(norm > 0, _div(levels, norm * tiny), 0.0),
            "step": _div(norm, levels)}


def quantize(fmt: Format, r: torch.Tensor, stats: dict, seed: int, lo: int = 0,
             u: torch.Tensor | None = None):
    """``(codes, c)`` for the residual chunk ``r`` (elements ``lo ..``) given the
    :func:`header_stats` of the whole residual (and, optionally, its uniforms ``u``)."""
    d = r.numel()
    neg = r < 0
    header = stats["header"]
    if fmt.kind == Kind.SIGN:
        return neg.to(torch.int64), torch.where(neg, -header, header)
    if u is None:
        u = uniforms(seed, lo, lo + d, r.device)
    if fmt.kind == Kind.SSIGN:
        neg = u >= 0.5 + (r * stats["tiny"]) * stats["half_inv"]
        return neg.to(torch.int64), torch.where(neg, -header, header)
    a = (r.abs() * _bucket_values(stats["tiny"], fmt, lo, lo + d)) * _bucket_values(
        stats["inv"], fmt, lo, lo + d)
    floor = a.to(torch.int32).to(torch.float32)  # a >= 0: truncation is floor (and fast)
    level = torch.minimum(floor + (u < a - floor).to(torch.float32), _f32(float(fmt.levels)))
    c = level * _bucket_values(stats["step"], fmt, lo, lo + d)
    codes = level.to(torch.int64) | (neg.to(torch.int64) << fmt.level_bits)
    return codes, torch.where(neg, -c, c)


def header(fmt: Format, r: torch.Tensor) -> Header:
    """The :class:`.elementwise.Header` of the residual ``r`` (``fmt.numel`` set)."""
    op = fmt.stats_op()
    combine = torch.maximum if op == Op.MAX else torch.add
    seglen = fmt.segment(r.numel())
    sums = tree_sum_rows(op_terms(r, op), seglen, combine)
    scale = fmt.rescue_scale()
    rescue = None if scale is None else tree_sum_rows(op_terms(r, op, scale), seglen, combine)
    return Header(fmt, r.numel(), header_values(fmt, sums, rescue), sums, rescue)


def encode(fmt: Format, fusion: Fusion, x, state, seed: int, payload: torch.Tensor,
           check=None):
    d = x.numel()
    r = prologue(fusion, x, state, write=not fmt.packed)
    if fmt.kind == Kind.FP32:
        payload[: 4 * d].view(torch.float32).copy_(r)
        epilogue(fusion, r, r, state)
        return
    flat = {k: t.view(-1) for k, t in state.items()}
    if fmt.kind in (Kind.FP16, Kind.BF16):
        out = payload[: 2 * d].view(torch.float16 if fmt.kind == Kind.FP16 else torch.bfloat16)
        for lo in range(0, d, CHUNK):
            hi = min(lo + CHUNK, d)
            rc = r[lo:hi]
            low = rc.clamp(-FP16_MAX, FP16_MAX).half() if fmt.kind == Kind.FP16 else to_bf16(rc)
            out[lo:hi] = low
            epilogue(fusion, rc, low.float(), {k: t[lo:hi] for k, t in flat.items()})
        return
    fmt = replace(fmt, numel=d)
    head = header(fmt, r)
    if check is not None:
        check(head)  # nothing is written before this
    if fusion.momentum:
        prologue(fusion, x, state, write=True)  # the momenta (r is the same)
    words = payload.view(torch.int32)
    nh = fmt.header_words(d)
    u = None
    stats = header_stats(fmt, head.values)
    for lo in range(0, d, CHUNK):
        hi = min(lo + CHUNK, d)
        codes, c = quantize(fmt, r[lo:hi], stats, seed, lo, None if u is None else u[lo:hi])
        w0 = nh + lo * fmt.width // 32  # lo is a multiple of 32: chunks start on a word
        pack_words(codes, fmt.width, out=words[w0 : w0 + words_for(hi - lo, fmt.width)])
        epilogue(fusion, r[lo:hi], c, {k: t[lo:hi] for k, t in flat.items()})
    words[:nh] = stats["header"].view(torch.int32)


def row_steps(fmt: Format, row: torch.Tensor, d: int) -> torch.Tensor | None:
    """QSGD's per-bucket ``n_b / S`` of one payload (computed once per row)."""
    if fmt.kind != Kind.QSGD:
        return None
    header = row.view(torch.int32)[: fmt.header_words(d)].view(torch.float32)
    return _div(header, _f32(float(fmt.levels)))


def decode_chunk_torch(fmt: Format, row: torch.Tensor, d: int, lo: int, hi: int,
                       steps: torch.Tensor | None = None):
    """fp32 values of elements ``lo .. hi-1`` of one payload (``row``: uint8, trusted length;
    ``steps``: its :func:`row_steps`)."""
    if fmt.kind == Kind.FP32:
        return row[4 * lo : 4 * hi].view(torch.float32)
    if fmt.kind in (Kind.FP16, Kind.BF16):
        half = torch.float16 if fmt.kind == Kind.FP16 else torch.bfloat16
        return row[2 * lo : 2 * hi].view(half).float()
    words = row.view(torch.int32)
    nh = fmt.header_words(d)
    ncw = words_for(d, fmt.width)
    w0 = lo * fmt.width // 32
    w1 = min(ncw, words_for(hi, fmt.width) + 1)
    fields = unpack_fields(words[nh + w0 : nh + w1], hi - lo, fmt.width)
    header = words[:nh].view(torch.float32)
    if fmt.kind in (Kind.SIGN, Kind.SSIGN):
        return torch.where(fields == 1, -header, header)
    step = _bucket_values(row_steps(fmt, row, d) if steps is None else steps, fmt, lo, hi)
    c = (fields & ((1 << fmt.level_bits) - 1)).to(torch.float32) * step
    return torch.where((fields >> fmt.level_bits) == 1, -c, c)


def decode_sum(fmt: Format, payloads, d: int, out, scale: float, add: bool):
    flat = out.view(-1)
    acc = flat if flat.dtype == torch.float32 else flat.float()
    if not add:
        acc.zero_()
    scale_t = _f32(scale)
    for row in payloads:
        steps = row_steps(fmt, row, d)
        for lo in range(0, d, CHUNK):
            hi = min(lo + CHUNK, d)
            c = decode_chunk_torch(fmt, row, d, lo, hi, steps)
            acc[lo:hi] += c if scale == 1.0 else c * scale_t
    if acc is not flat:
        flat.copy_(acc)
