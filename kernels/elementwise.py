"""Elementwise compressors' encode and decode-and-sum: the dispatcher.

The codes (:class:`.format.Format`) are specified in :mod:`.format`. One encode pass
(after a deterministic stats pass for the formats with a header, :mod:`.treesum`)
computes the residual (the fusion prologue), quantizes, packs and applies the fusion
epilogue with ``c = C(r)``. Implementations: :mod:`.elementwise_torch` (the torch twin),
:mod:`.elementwise_triton`, :mod:`.elementwise_cpu`; every one writes the same bytes.
"""

from __future__ import annotations

import torch

from .dispatch import Table
from .format import Format
from .fusion import Fusion

IMPLS = Table("elementwise", torch=".elementwise_torch", triton=".elementwise_triton",
              cpu=".elementwise_cpu")


def encode(fmt: Format, fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor],
           seed: int, payload: torch.Tensor, backend: str) -> None:
    """Write the payload of ``C(prologue(x))`` and apply the epilogue (see :mod:`.fusion`)."""
    payload[fmt.body_bytes(x.numel()) :].zero_()
    IMPLS(backend).encode(fmt, fusion, x, state, seed, payload)


def decode_sum(fmt: Format, payloads: torch.Tensor, d: int, out: torch.Tensor, scale: float,
               add: bool, backend: str) -> None:
    """``out (+)= scale * sum_i C_i`` over the rows of ``payloads``, in fp32, in row order."""
    IMPLS(backend).decode_sum(fmt, payloads, d, out, scale, add)
