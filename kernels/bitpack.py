"""Packing unsigned fields of any width 1..32 bits into a dense little-endian bit stream.

Bit order (the wire format of every gradpack payload): field ``i`` of width ``w``
occupies stream bits ``[i*w, (i+1)*w)``, least significant bit first; stream bit
``b`` is bit ``b % 8`` of byte ``b // 8``. Streams are stored as int32 words
(little-endian), so word ``k`` holds stream bits ``[32k, 32k + 32)`` and a field
may straddle two words. Fields are packed in groups of 32 (a group of 32 fields
fills exactly ``w`` words), which is how the Triton kernels tile the work.

This module is the torch twin; :mod:`.bitpack_triton` has the kernels.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from .backend import resolve

assert sys.byteorder == "little", "gradpack payloads assume a little-endian host"

MAX_WIDTH = 32
_M32 = 0xFFFFFFFF


def check_width(width: int) -> int:
    if not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"field width must be an int in [1, {MAX_WIDTH}], got {width!r}")
    return width


def words_for(nfields: int, width: int) -> int:
    """int32 words holding ``nfields`` fields of ``width`` bits."""
    return (nfields * width + 31) // 32


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
    if width == 1:  # one bit per field: numpy's packbits writes the stream directly
        packed = np.packbits(c.to(torch.uint8).cpu().numpy(), bitorder="little")
        words = torch.from_numpy(packed.view(np.int32)).to(c.device, torch.int64) & _M32
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
    if width == 1:  # numpy's unpackbits reads the stream directly
        bits = np.unpackbits(w.to(torch.int32).cpu().numpy().view(np.uint8), bitorder="little")
        return torch.from_numpy(bits[:n]).to(words.device, torch.int64)
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


def pack(
    fields: torch.Tensor, width: int, *, out: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Pack non-negative integer ``fields`` into a uint8 bit stream of
    ``4 * words_for(n, width)`` bytes (``out``: a preallocated uint8 buffer of that size)."""
    check_width(width)
    n = fields.numel()
    if n == 0:
        raise ValueError("pack: no fields to pack")
    nbytes = 4 * words_for(n, width)
    if out is None:
        out = torch.empty(nbytes, dtype=torch.uint8, device=fields.device)
    elif out.dtype != torch.uint8 or out.numel() != nbytes or not out.is_contiguous():
        raise ValueError(f"pack: out must be a contiguous uint8 tensor of {nbytes} bytes")
    if fields.is_floating_point() or fields.dtype == torch.bool:
        raise ValueError(f"pack: fields must be an integer tensor, got {fields.dtype}")
    if resolve(backend, fields.device) == "triton":
        from .bitpack_triton import pack_triton

        pack_triton(fields.reshape(-1), width, out.view(torch.int32))
    else:
        pack_words(fields.reshape(-1).to(torch.int64), width, out=out.view(torch.int32))
    return out


def unpack(payload: torch.Tensor, n: int, width: int, *, backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`pack`: ``n`` fields as int64."""
    check_width(width)
    nbytes = 4 * words_for(n, width)
    if payload.dtype != torch.uint8 or payload.dim() != 1:
        raise ValueError(f"unpack: payload must be a 1-D uint8 tensor, got {payload.dtype}")
    if payload.numel() != nbytes:
        raise ValueError(
            f"unpack: payload has {payload.numel()} bytes, {n} fields of {width} bits need {nbytes}"
        )
    words = payload.view(torch.int32)
    if resolve(backend, payload.device) == "triton":
        from .bitpack_triton import unpack_triton

        return unpack_triton(words, n, width)
    return unpack_fields(words, n, width)
