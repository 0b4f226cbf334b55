"""Triton kernels of :mod:`.bitpack`: the JIT helpers here are also inlined by the
compressor kernels, which compute their codes in registers and pack them in place."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GROUPS = 32  # 32-field groups per program: 1024 fields


@triton.jit
def pack_group_word(codes, p: tl.constexpr, W: tl.constexpr):
    """Word ``p`` (of ``W``) of each row of ``codes`` ([G, 32] int64 fields in
    ``[0, 2**W)``), as int32: the OR of every field's bits that land in it."""
    j = tl.arange(0, 32)[None, :]
    shift = j * W - 32 * p
    touches = (shift > -W) & (shift < 32)
    left = (codes << tl.minimum(tl.maximum(shift, 0), 63)) & 0xFFFFFFFF
    right = codes >> tl.minimum(tl.maximum(-shift, 0), 63)
    contrib = tl.where(touches, tl.where(shift >= 0, left, right), 0)
    return tl.sum(contrib, axis=1).to(tl.uint32).to(tl.int32, bitcast=True)


@triton.jit
def store_group_words(codes, words_ptr, group0, nwords, G: tl.constexpr, W: tl.constexpr):
    """Pack ``codes`` ([G, 32] int64) of groups ``group0 .. group0+G-1`` into ``words_ptr``."""
    g = group0 + tl.arange(0, G)
    for p in tl.static_range(W):
        word = pack_group_word(codes, p, W)
        idx = g.to(tl.int64) * W + p
        tl.store(words_ptr + idx, word, mask=idx < nwords)


@triton.jit
def load_field(words_ptr, field, nwords, W: tl.constexpr):
    """Fields at indices ``field`` (int64 tensor) of width ``W``; never reads past ``nwords``."""
    bit = field * W
    w0 = bit >> 5
    off = bit & 31
    lo = tl.load(words_ptr + w0, mask=w0 < nwords, other=0).to(tl.int64) & 0xFFFFFFFF
    hi = tl.load(words_ptr + w0 + 1, mask=w0 + 1 < nwords, other=0).to(tl.int64) & 0xFFFFFFFF
    return (((hi << 32) | lo) >> off) & ((1 << W) - 1)


@triton.jit
def _pack_kernel(fields_ptr, words_ptr, n, nwords, W: tl.constexpr, G: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = (pid * G + tl.arange(0, G))[:, None] * 32 + tl.arange(0, 32)[None, :]
    codes = tl.load(fields_ptr + offs, mask=offs < n, other=0).to(tl.int64)
    store_group_words(codes, words_ptr, pid * G, nwords, G, W)


@triton.jit
def _unpack_kernel(words_ptr, out_ptr, n, nwords, W: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    vals = load_field(words_ptr, offs, nwords, W)
    tl.store(out_ptr + offs, vals, mask=offs < n)


def pack(fields: torch.Tensor, width: int, words: torch.Tensor) -> None:
    """Pack integer ``fields`` into the int32 ``words`` (twin of :func:`.bitpack_torch.pack`)."""
    n = fields.numel()
    grid = (triton.cdiv(n, 32 * GROUPS),)
    _pack_kernel[grid](fields, words, n, words.numel(), W=width, G=GROUPS)


def unpack(words: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """The first ``n`` fields (int64) of the int32 ``words``."""
    out = torch.empty(n, dtype=torch.int64, device=words.device)
    block = 1024
    _unpack_kernel[(triton.cdiv(n, block),)](words, out, n, words.numel(), W=width, BLOCK=block)
    return out
