"""Torch twin of :mod:`.randk`: the Philox index draws, the gather with the fused
prologue, and the sparse epilogue."""

from __future__ import annotations

import torch

from . import philox_torch
from .fusion import Fusion
from .fusion_torch import prologue
from .randk import (
    CheckValues,
    WriteValues,
    decode_rows,
    indices_from_draws,
    value_scale,
    write_fp32,
)
from .sparse_torch import scatter_add, sparse_epilogue


def bounded(hi: torch.Tensor, lo: torch.Tensor, d: int) -> torch.Tensor:
    """``floor((hi * 2**32 + lo) * d / 2**64)`` for uint32 values held in int64, exactly:
    ``(hi * d + floor(lo * d / 2**32)) >> 32`` (every product stays below ``2**63``)."""
    return (hi * d + ((lo * d) >> 32)) >> 32


def draws(seed: int, m: int, d: int, device="cpu") -> torch.Tensor:
    """The first ``m`` draws of the stream (int64 in ``[0, d)``)."""
    q = torch.arange((m + 1) // 2, dtype=torch.int64, device=device)
    c0, c1, c2, c3 = philox_torch.randint4x(seed, q)
    return torch.stack((bounded(c0, c1, d), bounded(c2, c3, d)), 1).view(-1)[:m]



def indices(seed: int, d: int, k: int, device="cpu") -> torch.Tensor:
    """The ``k`` selected coordinates (int64, ascending) for ``seed``."""
    return indices_from_draws(draws, seed, d, k, device,
                              extend_on_host=torch.device(device).type == "cpu")


def encode(unbiased: bool, k: int, fusion: Fusion, x, state, seed: int, payload,
           write: WriteValues | None = None, check: CheckValues | None = None) -> None:
    d = x.numel()
    idx = indices(seed, d, k, x.device)
    r = None if fusion.is_identity else prologue(fusion, x, state, write=False)
    vals = x[idx].to(torch.float32) if r is None else r[idx]
    scale = value_scale(d, k, unbiased)
    if scale != 1.0:
        vals = vals * torch.tensor(scale, dtype=torch.float32)
    if check is not None:
        check(vals, idx)  # nothing is written before this (nor before write's own check)
    c_sel = (write or write_fp32)(vals, payload)
    if fusion.momentum:
        prologue(fusion, x, state, write=True)  # the momenta (r is the same)
    if r is not None:
        sparse_epilogue(fusion, r, idx, c_sel, state)


def decode_sum(k: int, payloads, d: int, seeds, out, scale: float, add: bool,
               read=None) -> None:
    decode_rows(k, payloads, d, seeds, out, scale, add, read, indices, scatter_add)
