"""Pieces every sparsifier (Top-K, Random-K) shares, and the dispatcher of the decode-side
scatter-add: the spec. :mod:`.sparse_torch` has the torch twin (residual, sparse epilogue,
scatter-add); :mod:`.sparse_triton` and :mod:`.sparse_cpu` the kernels.

A sparsifier's payload holds ``K`` fp32 values ``v_j`` for ``K`` distinct indices
``i_j``; its decoded value is ``C(r)_i = 0.0 + v_j`` at ``i = i_j`` and ``0`` elsewhere
(the ``0.0 +`` is the decoder's accumulation from zero, which turns ``-0.0`` into
``+0.0``; the fused epilogue uses exactly that ``c`` so fused and unfused steps agree
bit for bit).

Decode-and-sum (``out (+)= scale * sum_i C_i``, fp32, rows in order)::

    acc = out (add=True) or 0.0
    for each row, for each entry j:  acc[i_j] = acc[i_j] + (v_j * scale if scale != 1 else v_j)

Coordinates a row does not select are left untouched. Indices within a row are
distinct (decoders validate this), so the per-row scatter has no write conflicts.
"""

from __future__ import annotations

import torch

from .dispatch import Table

IMPLS = Table("sparse", torch=".sparse_torch", triton=".sparse_triton", cpu=".sparse_cpu")


def buffer(scratch: dict | None, name: str, numel: int, dtype: torch.dtype,
           device) -> torch.Tensor:
    """A work buffer of ``numel`` elements from the caller's ``scratch`` dict: a prefix of
    the largest one asked for so far under ``name`` (so the hot path does not allocate,
    and buckets of several sizes share one buffer); a fresh one without ``scratch``."""
    t = None if scratch is None else scratch.get(name)
    if t is None or t.numel() < numel or t.dtype != dtype or t.device != torch.device(device):
        t = torch.empty(numel, dtype=dtype, device=device)
        if scratch is not None:
            scratch[name] = t
    return t[:numel]


def key_image(r: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Order-preserving int32 image of ``|r|`` (fp32): the bits of ``r`` with the sign
    cleared. For finite values ``|a| < |b|`` iff ``key(a) < key(b)``; ``+0`` and ``-0``
    share key 0."""
    return torch.bitwise_and(r.view(torch.int32), 0x7FFFFFFF, out=out)


def key_to_float(key: int) -> float:
    """The non-negative fp32 value whose key is ``key`` (as a Python float)."""
    return torch.tensor(int(key), dtype=torch.int32).view(torch.float32).item()


def accumulator(out: torch.Tensor, add: bool) -> torch.Tensor:
    """The fp32 accumulator of decode-and-sum: ``out`` itself when fp32."""
    flat = out.view(-1)
    if flat.dtype == torch.float32:
        if not add:
            flat.zero_()
        return flat
    return flat.float() if add else torch.zeros(flat.numel(), dtype=torch.float32,
                                                device=flat.device)



def scatter_add(acc: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, scale: float,
                backend: str) -> None:
    """One row of decode-and-sum into the fp32 accumulator (see module doc)."""
    IMPLS(backend).scatter_add(acc, idx, vals, scale)
