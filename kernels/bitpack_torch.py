"""Torch twin of :mod:`.bitpack` (the spec has the bit order): plain tensor operations on
any device, no host round trip."""

from __future__ import annotations

import torch

from .bitpack import check_width, words_for

_M32 = 0xFFFFFFFF


def pack_words(codes: torch.Tensor, width: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack integer ``codes`` (each in ``[0, 2**width)``) into int32 words.

    ``out`` (int32, ``words_for(n, width)`` elements) is filled when given.
    """
    check_width(width)
    n = codes.numel()
    nwords = words_for(n, width)
    if out is None:
        out = torch.empty(nwords, dtype=torch.int32, device=codes.device)
    groups = (n + 31) // 32
    c = torch.zeros(groups * 32, dtype=torch.int64, device=codes.device)
    c[:n] = codes.reshape(-1)
    if 32 % width == 0:  # whole fields per word: shift each into place, add (disjoint bits)
        per_word = 32 // width
        shifts = torch.arange(per_word, device=c.device) * width
        words = (c.view(-1, per_word) << shifts).sum(1)
    else:  # field j of each 32-field group lands at bit j*width of the group's stream
        c = c.view(groups, 32)
        words = torch.zeros(groups, width, dtype=torch.int64, device=c.device)
        for j in range(32):
            word, shift = divmod(j * width, 32)
            words[:, word] |= (c[:, j] << shift) & _M32
            if shift + width > 32:
                words[:, word + 1] |= c[:, j] >> (32 - shift)
    words = words.reshape(-1)[:nwords]
    out.copy_(words - ((words >> 31) << 32))  # uint32 -> int32 two's complement
    return out


def unpack_fields(words: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """The first ``n`` fields (int64) of the 1-D int32 ``words``; reads never leave ``words``
    (fields whose bits lie past its end read as zeros)."""
    check_width(width)
    groups = (n + 31) // 32
    w = torch.zeros(groups * width, dtype=torch.int64, device=words.device)
    take = min(words.numel(), w.numel())
    w[:take] = words[:take]
    w &= _M32
    mask = (1 << width) - 1
    if 32 % width == 0:
        per_word = 32 // width
        shifts = torch.arange(per_word, device=w.device) * width
        return ((w[:, None] >> shifts) & mask).view(-1)[:n]
    w = w.view(groups, width)
    out = torch.empty(groups, 32, dtype=torch.int64, device=w.device)
    for j in range(32):
        word, shift = divmod(j * width, 32)
        field = w[:, word] >> shift
        if shift + width > 32:
            field = field | (w[:, word + 1] << (32 - shift))
        out[:, j] = field & mask
    return out.view(-1)[:n]


def pack(fields: torch.Tensor, width: int, words: torch.Tensor) -> None:
    """Pack int64 ``fields`` into the int32 ``words``."""
    pack_words(fields, width, out=words)


def unpack(words: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """The first ``n`` fields (int64) of the int32 ``words``."""
    return unpack_fields(words, n, width)
