"""Packing unsigned fields of any width 1..32 bits into a dense little-endian bit stream.

Bit order (the wire format of every gradpack payload): field ``i`` of width ``w``
occupies stream bits ``[i*w, (i+1)*w)``, least significant bit first; stream bit
``b`` is bit ``b % 8`` of byte ``b // 8``. Streams are stored as int32 words
(little-endian), so word ``k`` holds stream bits ``[32k, 32k + 32)`` and a field
may straddle two words. Fields are packed in groups of 32 (a group of 32 fields
fills exactly ``w`` words), which is how the Triton kernels tile the work.

This module is the spec and the dispatcher of :func:`pack` / :func:`unpack`; the
implementations are :mod:`.bitpack_torch` (the torch twin), :mod:`.bitpack_triton` and
:mod:`.bitpack_cpu`.
"""

from __future__ import annotations

import sys

import torch

from .backend import resolve
from .dispatch import Table

assert sys.byteorder == "little", "gradpack payloads assume a little-endian host"

MAX_WIDTH = 32
IMPLS = Table("bitpack", torch=".bitpack_torch", triton=".bitpack_triton", cpu=".bitpack_cpu")


def check_width(width: int) -> int:
    if not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"field width must be an int in [1, {MAX_WIDTH}], got {width!r}")
    return width


def words_for(nfields: int, width: int) -> int:
    """int32 words holding ``nfields`` fields of ``width`` bits."""
    return (nfields * width + 31) // 32


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
    IMPLS(resolve(backend, fields.device)).pack(fields.reshape(-1).to(torch.int64), width,
                                                out.view(torch.int32))
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
    return IMPLS(resolve(backend, payload.device)).unpack(payload.view(torch.int32), n, width)
