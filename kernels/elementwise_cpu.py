"""Native CPU kernels of :mod:`.elementwise` (numba): the fused encode and the
decode-and-sum of every elementwise format, bit for bit the torch twin's.

Encode is one stats pass for the formats with a header (:mod:`.treesum_cpu`, the
documented order; the overflow rescue sums, :mod:`.format`, only when a sum is ``inf``),
the header once per segment (:func:`header_values`, :func:`header_stats`, as the twin's),
the caller's check of it, then one pass over blocks of ``BLOCK`` elements, in parallel
(:func:`.native.run_blocks`): the fusion prologue into an fp32 scratch block, the code
and ``c = C(r)``, the packed words, the epilogue. Sign without an epilogue or momentum is
one pass: its bits do not depend on the header, so the stats pass packs them
(:func:`_sign_pass`, into scratch words copied to the payload after the check).
Decode-and-sum walks the same blocks, and for each block every payload row in order,
accumulating in fp32 scratch, then writes ``out`` once. Blocks start on a
multiple of 32 elements, so each writes only its own payload words and output elements:
the result does not depend on the thread count. Decoding reads only inside the payload
rows (sizes are checked, field reads are bounded) and writes only ``out[0:d]``.
"""

from __future__ import annotations

import threading

import numba as nb
import numpy as np
import torch

from .bitpack import words_for
from .bitpack_cpu import field
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
    Kind,
)
from .fusion import Fusion, Update, check_state
from .fusion_cpu import (
    BF16,
    FP16,
    FP32,
    bf16_to_f32,
    bits_f32,
    f32_to_bf16,
    f32_to_half,
    half_to_f32,
    load,
    residual,
    scalars,
    sources,
    state_arrays,
    update,
)
from .native import JIT, array, run_blocks, set_threads
from .philox_cpu import draw, keys
from .treesum import Op, chunk_width
from .treesum_cpu import chunk_of, finish, sums_of

SIGN, SSIGN, QSGD = int(Kind.SIGN), int(Kind.SSIGN), int(Kind.QSGD)
NONE, ABS = int(Update.NONE), int(Op.ABS)
BLOCK = 2048  # elements per block (a multiple of 32: blocks own whole payload words)
GRAIN = 32  # fewest blocks worth a thread

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_HMAX = np.float32(FP16_MAX)
_TINY = np.float32(TINY)
_TINY_SCALE = np.float32(TINY_SCALE)
_HUGE = np.float32(HUGE)
_HUGE_SCALE = np.float32(HUGE_SCALE)
_INF = np.float32(np.inf)
_FMAX = np.float32(FP32_MAX)
_PREV_MAX = np.float32(PREV_MAX)
_UNDO_ABS = np.float32(UNDO_ABS)
_UNDO_SQUARE = np.float32(UNDO_SQUARE)
_EMPTY_F32 = np.empty(0, dtype=np.float32)
_GATHER = np.uint64(0x0102040810204080)
_S56 = np.uint64(56)
_B8 = np.uint64(0xFF)
_REPLICATE = np.uint64(0x0101010101010101)  # a byte into all eight
_SELECT = np.uint64(0x8040201008040201)  # bit i of byte i
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)  # a set bit carries into each byte's top bit
_S7 = np.uint64(7)
_ONES = np.uint64(0x0101010101010101)


@nb.njit(**JIT)
def header_values(kind, sums, rescue, d, levels, maxnorm, header):
    """Per segment, the ``header`` word from its sum (sign ``s = sum / d``, ssign and qsgd
    ``n = sqrt(sum)``, qsgd:inf ``n_b = max``) or, where the sum is ``+inf``, from its
    rescue sum (:mod:`.format`, "Overflow"; ``rescue`` is only read there); qsgd's top level
    kept finite. Each a correctly rounded fp32 division or square root."""
    for b in range(sums.shape[0]):
        s = sums[b]
        if kind == SIGN:
            if s == _INF:
                big = (rescue[b] / np.float32(d)) * _UNDO_ABS
                header[b] = _FMAX if big == _INF and rescue[b] < _INF else big
            else:
                header[b] = s / np.float32(d)
            continue
        if maxnorm:
            norm = s
        elif s == _INF:
            norm = np.sqrt(rescue[b]) * _UNDO_SQUARE
        else:
            norm = np.sqrt(s)
        if kind == QSGD and (norm / levels) * levels == _INF and norm < _INF:
            norm = _PREV_MAX
        header[b] = norm


@nb.njit(**JIT)
def header_all(kind, sums, rescue, d, levels, maxnorm, header, tiny, factor, step):
    """:func:`header_values` then :func:`header_stats`, in one call (one dispatch)."""
    header_values(kind, sums, rescue, d, levels, maxnorm, header)
    header_stats(kind, header, levels, tiny, factor, step)


@nb.njit(**JIT)
def header_stats(kind, header, levels, tiny, factor, step):
    """Per segment, from its ``header`` word, the factors the elements are scaled by
    (ssign ``t`` and ``1/2 / (n t)``; qsgd ``t``, ``S / (n_b t)`` and ``n_b / S``; ``t`` is
    :data:`.format.TINY_SCALE` for a norm below ``TINY``, ``HUGE_SCALE`` for one at or
    above ``HUGE``, else 1), each a correctly rounded fp32 division."""
    for b in range(header.shape[0]):
        if kind == SIGN:
            continue
        norm = header[b]
        t = _TINY_SCALE if norm < _TINY else (_HUGE_SCALE if norm >= _HUGE else _ONE)
        tiny[b] = t
        if kind == SSIGN:
            factor[b] = _HALF / (norm * t) if norm > _ZERO else _ZERO
        else:
            factor[b] = levels / (norm * t) if norm > _ZERO else _ZERO
            step[b] = norm / levels


@nb.njit(**JIT)
def quantize(kind, r, n, lo, uni, c, codes, bits, header, tiny, factor, step, levels, lbits,
             bucket, k0, k1):
    """``c[0:n]`` and the codes of a packed format for the block's residuals: one bit per
    byte in ``bits[0:n]`` (sign, ssign), ``codes[0:n]`` (qsgd)."""
    if kind == SIGN:
        s = header[0]
        for j in range(n):
            neg = r[j] < _ZERO
            bits[j] = neg
            c[j] = -s if neg else s
        return
    draw(k0, k1, lo, n, uni)
    if kind == SSIGN:
        s = header[0]
        t = tiny[0]
        half_inv = factor[0]
        for j in range(n):
            neg = uni[j] >= _HALF + (r[j] * t) * half_inv
            bits[j] = neg
            c[j] = -s if neg else s
        return
    sign_bit = 1 << lbits
    pos = lo
    while pos < lo + n:  # one run per bucket: its factors are loop constants
        b = pos // bucket
        end = min((b + 1) * bucket, lo + n)
        t = tiny[b]
        inv = factor[b]
        st = step[b]
        rs, us, cs, ks = r[pos - lo :], uni[pos - lo :], c[pos - lo :], codes[pos - lo :]
        for j in range(end - pos):
            a = (abs(rs[j]) * t) * inv
            fl = np.floor(a)
            level = fl + (_ONE if us[j] < a - fl else _ZERO)
            level = levels if level > levels else level
            neg = rs[j] < _ZERO
            cj = level * st
            cs[j] = -cj if neg else cj
            ks[j] = np.int32(level) | (sign_bit if neg else 0)
        pos = end


@nb.njit(inline="always", **JIT)
def pack_fixed(codes, nw, width, per, words, w0):
    """``nw`` words of ``per = 32 // width`` fields each (``width`` divides 32)."""
    mask = (1 << width) - 1
    ws = words[w0 : w0 + nw]
    for k in range(nw):
        acc = 0
        for j in range(per):
            acc |= (np.int64(codes[k * per + j]) & mask) << (j * width)
        ws[k] = np.int32(acc)


@nb.njit(**JIT)
def pack_bits(bits64, n, words, w0):
    """Pack one-bit codes held one per byte (``bits64``: their uint64 view, zero from ``n``
    to the next multiple of 32) into ``words[w0 : w0 + words_for(n, 1)]``: the multiply
    gathers byte ``i``'s bit of each 8-byte lane to bit ``56 + i``."""
    nw = (n + 31) // 32
    ws = words[w0 : w0 + nw]
    for k in range(nw):
        acc = np.uint64(0)
        for m in range(4):
            acc |= ((bits64[4 * k + m] * _GATHER) >> _S56) << np.uint64(8 * m)
        ws[k] = np.int32(np.int64(acc) - ((np.int64(acc) >> 31) << 32))


@nb.njit(**JIT)
def pack(codes, n, width, words, w0):
    """Pack ``codes[0:n]`` (int32, zero from ``n`` to the next multiple of 32) as fields of
    ``width`` bits (2 or more) into ``words[w0 : w0 + words_for(n, width)]``."""
    nw = (n * width + 31) // 32
    if width == 2:
        pack_fixed(codes, nw, 2, 16, words, w0)
    elif width == 4:
        pack_fixed(codes, nw, 4, 8, words, w0)
    elif width == 8:
        pack_fixed(codes, nw, 8, 4, words, w0)
    elif width == 16:
        pack_fixed(codes, nw, 16, 2, words, w0)
    else:  # a field may straddle two words: 32 fields fill exactly `width` words
        mask = (1 << width) - 1
        end = w0 + nw
        for g in range((n + 31) // 32):
            acc = 0
            filled = 0
            out = w0 + g * width
            for j in range(32):
                f = np.int64(codes[g * 32 + j]) & mask
                acc |= f << filled
                filled += width
                if filled >= 32:
                    if out < end:
                        words[out] = np.int32(acc & 0xFFFFFFFF)
                    out += 1
                    filled -= 32
                    acc = f >> (width - filled) if filled > 0 else 0


@nb.njit(**JIT)
def _encode(b0, b1, xf, xh, xkind, v, u, h, words, halfs, floats, header, tiny, factor, step,
            d, kind, width, levels, bucket, k0, k1, momentum, rcode, ucode, keep, take, gamma,
            beta, nh):
    """Encode blocks ``b0 .. b1-1`` (the stats are done: :func:`header_stats`)."""
    r = np.empty(BLOCK, dtype=np.float32)
    c = np.empty(BLOCK, dtype=np.float32)
    uni = np.empty(BLOCK, dtype=np.float32)
    codes = np.zeros(BLOCK, dtype=np.int32)
    bits = np.zeros(BLOCK, dtype=np.uint8)
    bits64 = bits.view(np.uint64)
    for blk in range(b0, b1):
        lo = blk * BLOCK
        n = min(BLOCK, d - lo)
        residual(xf, xh, xkind, v, u, h, lo, n, momentum, rcode, keep, take, gamma, True, r)
        if kind == FP32:
            fs = floats[lo : lo + n]
            for j in range(n):
                fs[j] = r[j]
            update(h, lo, n, ucode, beta, r, r)
            continue
        hs = halfs[lo : lo + n]
        if kind == FP16:
            for j in range(n):
                x = r[j]
                if x > _HMAX:
                    x = _HMAX
                elif x < -_HMAX:
                    x = -_HMAX
                hb = f32_to_half(x)
                hs[j] = np.int16(hb)
                c[j] = half_to_f32(hb)
        elif kind == BF16:
            for j in range(n):
                hb = f32_to_bf16(r[j])
                hs[j] = np.int16(hb)
                c[j] = bf16_to_f32(hb)
        else:
            quantize(kind, r, n, lo, uni, c, codes, bits, header, tiny, factor, step, levels,
                     width - 1, bucket, k0, k1)
            for j in range(n, (n + 31) // 32 * 32):  # the last group's padding
                codes[j] = 0
                bits[j] = 0
            if width == 1:
                pack_bits(bits64, n, words, nh + lo // 32)
            else:
                pack(codes, n, width, words, nh + lo // 32 * width)
        update(h, lo, n, ucode, beta, r, c)


@nb.njit(**JIT)
def _sign_pass(row0, row1, xf, xh, xkind, v, u, h, d, p, rcode, gamma, partial, words, nh):
    """Sign without an epilogue, in one pass: its bits do not depend on the header, so the
    stats pass packs them too (rows of ``p`` elements: chunks of the one segment)."""
    r = np.empty(p, dtype=np.float32)
    a = np.empty(p, dtype=np.float32)
    b = np.empty(max(1, p // 2), dtype=np.float32)
    bits = np.zeros((p + 31) // 32 * 32, dtype=np.uint8)
    bits64 = bits.view(np.uint64)
    for row in range(row0, row1):
        lo = row * p
        n = min(p, d - lo)
        residual(xf, xh, xkind, v, u, h, lo, n, 0, rcode, _ONE, _ONE, gamma, False, r)
        for j in range(n):
            bits[j] = r[j] < _ZERO
        for j in range(n, (n + 31) // 32 * 32):
            bits[j] = 0
        pack_bits(bits64, n, words, nh + lo // 32)
        partial[row] = chunk_of(r, n, p, ABS, a, b)


@nb.njit(inline="always", **JIT)
def unpack_bytes(words, w0, nw, width, per, fields):
    """``per = 8 // width`` fields from each byte of ``words[w0 : w0 + nw]``: one long loop
    over the bytes (it vectorizes; a loop over a word's few fields would not)."""
    mask = (1 << width) - 1
    bs = words[w0 : w0 + nw].view(np.uint8)
    for i in range(4 * nw):
        b = np.int64(bs[i])
        for j in range(per):
            fields[i * per + j] = np.int32((b >> (j * width)) & mask)


@nb.njit(inline="always", **JIT)
def unpack_halves(words, w0, nw, fields):
    """Two 16-bit fields from each word of ``words[w0 : w0 + nw]``."""
    hs = words[w0 : w0 + nw].view(np.uint16)
    for i in range(2 * nw):
        fields[i] = np.int32(hs[i])


@nb.njit(**JIT)
def unpack(words, w0, n, width, fields):
    """``fields[0:n]`` (int32; up to the next multiple of 32 for the widths that divide
    32) from ``words[w0:]``, reading only inside ``words``."""
    nw = (n * width + 31) // 32
    if width == 1:
        unpack_bytes(words, w0, nw, 1, 8, fields)
    elif width == 2:
        unpack_bytes(words, w0, nw, 2, 4, fields)
    elif width == 4:
        unpack_bytes(words, w0, nw, 4, 2, fields)
    elif width == 8:
        unpack_bytes(words, w0, nw, 8, 1, fields)
    elif width == 16:
        unpack_halves(words, w0, nw, fields)
    else:
        body = words[w0:]  # a view: field() bounds its reads by its length
        for j in range(n):
            fields[j] = np.int32(np.int64(field(body, j, width, body.shape[0])))


@nb.njit(**JIT)
def decode_row(words, halfs, floats, row, kind, width, levels, bucket, nh, lo, n, c, fields):
    """``c[0:n]``: fp32 values of elements ``lo ..`` of payload ``row``."""
    if kind == FP32:
        fs = floats[row, lo : lo + n]
        for j in range(n):
            c[j] = fs[j]
    elif kind == FP16:
        hs = halfs[row, lo : lo + n]
        for j in range(n):
            c[j] = half_to_f32(hs[j])
    elif kind == BF16:
        hs = halfs[row, lo : lo + n]
        for j in range(n):
            c[j] = bf16_to_f32(hs[j])
    else:
        unpack(words[row], nh + lo // 32 * width, n, width, fields)
        if kind != QSGD:
            s = bits_f32(words[row, 0])
            for j in range(n):
                c[j] = -s if fields[j] & 1 else s
            return
        lbits = width - 1
        lmask = (1 << lbits) - 1
        pos = lo
        while pos < lo + n:
            b = pos // bucket
            end = min((b + 1) * bucket, lo + n)
            st = bits_f32(words[row, b]) / levels
            fs, cs = fields[pos - lo :], c[pos - lo :]
            for j in range(end - pos):
                f = np.int64(fs[j])
                cj = np.float32(f & lmask) * st
                cs[j] = -cj if (f >> lbits) & 1 else cj
            pos = end


@nb.njit(**JIT)
def add_signs(words, w0, n, scale, has_scale, bits64, acc):
    """``acc[0:n] += c * scale`` for a sign/ssign row (``c = -s`` where the bit is set, else
    ``s``; ``(-s) * scale == -(s * scale)`` exactly), from the packed words: each byte of
    them spreads to eight 0/1 bytes (``bits64``, a uint64 view of uint8 scratch), then one
    select-and-add loop."""
    s = bits_f32(words[0])
    pos = s * scale if has_scale else s
    neg = -s * scale if has_scale else -s
    nw = (n + 31) // 32
    ws = words[w0 : w0 + nw]
    for k in range(nw):
        w = np.uint64(np.int64(ws[k]) & 0xFFFFFFFF)
        for m in range(4):
            byte = (w >> np.uint64(8 * m)) & _B8
            spread = ((byte * _REPLICATE) & _SELECT) + _LOW7
            bits64[4 * k + m] = (spread >> _S7) & _ONES
    bits = bits64.view(np.uint8)
    for j in range(n):
        acc[j] = acc[j] + (neg if bits[j] else pos)


@nb.njit(**JIT)
def _decode_sum(b0, b1, words, halfs, floats, nrows, d, kind, width, levels, bucket, nh, scale,
                has_scale, add, outf, outh, okind):
    """Decode-and-sum blocks ``b0 .. b1-1`` of every payload row into ``out``."""
    acc = np.empty(BLOCK, dtype=np.float32)
    c = np.empty(BLOCK, dtype=np.float32)
    fields = np.empty(BLOCK, dtype=np.int32)
    bits64 = np.empty(BLOCK // 8, dtype=np.uint64)
    for blk in range(b0, b1):
        lo = blk * BLOCK
        n = min(BLOCK, d - lo)
        if add:
            load(outf, outh, okind, lo, n, acc)
        else:
            for j in range(n):
                acc[j] = _ZERO
        for row in range(nrows):
            if kind == SIGN or kind == SSIGN:  # c * scale is one of two values: add them
                add_signs(words[row], nh + lo // 32, n, scale, has_scale, bits64, acc)
                continue
            decode_row(words, halfs, floats, row, kind, width, levels, bucket, nh, lo, n,
                       c, fields)
            if has_scale:
                for j in range(n):
                    acc[j] = acc[j] + c[j] * scale
            else:
                for j in range(n):
                    acc[j] = acc[j] + c[j]
        fs = outf[lo : lo + n]
        hs = outh[lo : lo + n]
        if okind == FP32:
            for j in range(n):
                fs[j] = acc[j]
        elif okind == FP16:
            for j in range(n):
                hs[j] = np.int16(f32_to_half(acc[j]))
        else:
            for j in range(n):
                hs[j] = np.int16(f32_to_bf16(acc[j]))


def _kind_of(fmt) -> int:
    return int(fmt.kind)


def _views(pay: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int32, int16 and float32 views of uint8 payload bytes (rows of ``pay`` if 2-D); a
    view whose element size does not divide the row length is empty."""
    nbytes = pay.shape[-1]
    lead = pay.shape[:-1]
    words = pay.view(np.int32) if nbytes % 4 == 0 else np.zeros((*lead, 0), dtype=np.int32)
    halfs = pay.view(np.int16) if nbytes % 2 == 0 else np.zeros((*lead, 0), dtype=np.int16)
    return words, halfs, words.view(np.float32)


_SCRATCH = threading.local()


def _scratch_words(n: int) -> np.ndarray:
    """``n`` int32 words of this thread's reusable scratch (a fresh buffer of megabytes
    costs its page faults on every call)."""
    buf = getattr(_SCRATCH, "words", None)
    if buf is None or buf.shape[0] < n:
        buf = _SCRATCH.words = np.empty(max(n, 1024), dtype=np.int32)
    return buf[:n]


def _header(fmt, d: int, sums: np.ndarray, rescue_sums):
    """``(header, tiny, factor, step)``: the :class:`.elementwise.Header` from the segment
    ``sums`` (``rescue_sums(scale)`` runs the rescue pass, only when some sum is ``+inf``)
    and the per-segment factors of :func:`header_stats` (numpy)."""
    scale = fmt.rescue_scale()
    rescue = _EMPTY_F32
    if scale is not None and np.isinf(sums).any():
        rescue = rescue_sums(scale)
    header, tiny, factor, step = np.zeros((4, sums.shape[0]), dtype=np.float32)  # one alloc
    header_all(np.int64(_kind_of(fmt)), sums, rescue, np.int64(d),
               np.float32(float(fmt.levels)), bool(fmt.maxnorm), header, tiny, factor, step)
    head = Header(fmt, d, torch.from_numpy(header), torch.from_numpy(sums),
                  torch.from_numpy(rescue) if rescue.shape[0] else None)
    return head, tiny, factor, step


def values_of(fmt, d: int, sums: torch.Tensor, rescue: torch.Tensor | None) -> torch.Tensor:
    """Twin of :func:`.elementwise_torch.header_values` (``d`` elements; fp32 CPU tensors,
    ``rescue`` needed only where a sum is ``+inf``)."""
    if rescue is None and bool((sums == np.inf).any()) and not fmt.maxnorm:
        raise ValueError("header values: a sum is inf and no rescue sums were given")
    if rescue is not None and rescue.numel() != sums.numel():
        raise ValueError(f"header values: {sums.numel()} sums, {rescue.numel()} rescue sums")
    header = np.empty(sums.numel(), dtype=np.float32)
    header_values(np.int64(_kind_of(fmt)), array(sums), _EMPTY_F32 if rescue is None else
                  array(rescue), np.int64(d), np.float32(float(fmt.levels)), bool(fmt.maxnorm),
                  header)
    return torch.from_numpy(header)


def encode(fmt, fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor], seed: int,
           payload: torch.Tensor, check=None) -> None:
    """Native twin of :func:`.elementwise.encode_torch`: write the payload of
    ``C(prologue(x))`` (header and packed codes) and apply the epilogue in place; formats
    with a header call ``check(header)`` before writing anything."""
    d = x.numel()
    kind = _kind_of(fmt)
    if x.device.type != "cpu" or x.dim() != 1 or not x.is_contiguous() or d < 1:
        raise ValueError("native encode: x must be a non-empty 1-D contiguous CPU tensor")
    if payload.dtype != torch.uint8 or payload.dim() != 1 or not payload.is_contiguous():
        raise ValueError("native encode: payload must be a 1-D contiguous uint8 tensor")
    if payload.numel() < fmt.body_bytes(d) or payload.data_ptr() % 4:
        raise ValueError(f"native encode: payload needs {fmt.body_bytes(d)} bytes, 4-aligned; "
                         f"got {payload.numel()} at address {payload.data_ptr():#x}")
    check_state(fusion, x, state)
    set_threads()
    xf, xh, xkind = sources(x)
    v, u, h = state_arrays(fusion, state)
    fs = scalars(fusion)
    momentum, rcode, ucode, keep, take, gamma, beta = fs
    pay = array(payload)
    words, halfs, floats = _views(pay[: pay.shape[0] // 4 * 4])
    halfs = pay[: pay.shape[0] // 2 * 2].view(np.int16)
    nh = fmt.header_words(d)
    levels = np.float32(float(fmt.levels))
    header = tiny = factor = step = _EMPTY_F32

    def rescue_sums(scale):
        return sums_of(xf, xh, xkind, v, u, h, d, fmt.segment(d), int(fmt.stats_op()), fs,
                       scale)

    if kind == SIGN and momentum == 0 and ucode == NONE:
        p = chunk_width(d)
        partial = np.empty(-(-d // p), dtype=np.float32)
        ncw = words_for(d, 1)
        bitwords = _scratch_words(ncw)  # the payload is written after the check
        run_blocks(_sign_pass, partial.shape[0], max(1, GRAIN * BLOCK // p), xf, xh, xkind, v,
                   u, h, np.int64(d), np.int64(p), rcode, gamma, partial, bitwords,
                   np.int64(0))
        sums = np.empty(1, dtype=np.float32)
        finish(partial, np.int64(1), np.int64(partial.shape[0]), np.int64(ABS), sums)
        head = _header(fmt, d, sums, rescue_sums)[0]
        if check is not None:
            check(head)
        words[nh : nh + ncw] = bitwords
        words[:nh] = array(head.values).view(np.int32)
        return
    if fmt.packed:
        sums = sums_of(xf, xh, xkind, v, u, h, d, fmt.segment(d), int(fmt.stats_op()), fs)
        head, tiny, factor, step = _header(fmt, d, sums, rescue_sums)
        header = array(head.values)
        if check is not None:
            check(head)  # nothing is written before this
    k0, k1 = keys(seed) if kind in (SSIGN, QSGD) else (np.uint64(0), np.uint64(0))
    run_blocks(_encode, -(-d // BLOCK), GRAIN, xf, xh, xkind, v, u, h, words, halfs, floats,
               header, tiny, factor, step, np.int64(d), np.int64(kind), np.int64(fmt.width), levels,
               np.int64(max(fmt.bucket, 1)), k0, k1, momentum, rcode, ucode, keep, take, gamma,
               beta, np.int64(nh))
    if fmt.packed:
        words[:nh] = header.view(np.int32)


def decode_sum(fmt, payloads: torch.Tensor, d: int, out: torch.Tensor, scale: float,
               add: bool) -> None:
    """Native twin of :func:`.elementwise.decode_sum_torch`: ``out (+)= sum_i scale * c_i``
    over the payload rows in order, accumulated in fp32, written in ``out``'s dtype."""
    kind = _kind_of(fmt)
    if payloads.dtype != torch.uint8 or payloads.dim() != 2 or not payloads.is_contiguous():
        raise ValueError("native decode_sum: payloads must be a contiguous [n, bytes] uint8 "
                         "tensor")
    n, nbytes = payloads.shape
    align = 2 if kind in (FP16, BF16) else 4
    if n < 1 or nbytes < fmt.body_bytes(d) or nbytes % align or payloads.data_ptr() % align:
        raise ValueError(f"native decode_sum: {n} rows of {nbytes} bytes; each row needs "
                         f"at least {fmt.body_bytes(d)} bytes, {align}-aligned")
    if out.device.type != "cpu" or not out.is_contiguous() or out.numel() != d:
        raise ValueError(f"native decode_sum: out must be a contiguous CPU tensor of {d} "
                         f"elements, got {tuple(out.shape)}")
    set_threads()
    outf, outh, okind = sources(out.view(-1))
    words, halfs, floats = _views(array(payloads))
    run_blocks(_decode_sum, -(-d // BLOCK), GRAIN, words, halfs, floats, np.int64(n),
               np.int64(d), np.int64(kind), np.int64(fmt.width), np.float32(float(fmt.levels)),
               np.int64(max(fmt.bucket, 1)), np.int64(fmt.header_words(d)), np.float32(scale),
               scale != 1.0, bool(add), outf, outh, okind)


assert words_for(BLOCK, 32) == BLOCK  # blocks own whole words at every width
