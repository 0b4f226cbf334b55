"""Elementwise compressors' encode and decode-and-sum: the dispatcher.

The codes (:class:`.format.Format`) are specified in :mod:`.format`. One encode pass
(after a deterministic stats pass for the formats with a header, :mod:`.treesum`)
computes the residual (the fusion prologue), quantizes, packs and applies the fusion
epilogue with ``c = C(r)``. Implementations: :mod:`.elementwise_torch` (the torch twin),
:mod:`.elementwise_triton`, :mod:`.elementwise_cpu`; every one writes the same bytes.

Between the two passes every backend hands the finished header (:class:`Header`) to the
caller's ``check``, before it writes a payload byte or a state element: a header that
overflowed (:mod:`.format`, "Overflow") can be refused with nothing written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .dispatch import Table
from .format import UNDO_ABS, UNDO_SQUARE, Format, Kind
from .fusion import Fusion

IMPLS = Table("elementwise", torch=".elementwise_torch", triton=".elementwise_triton",
              cpu=".elementwise_cpu")


@dataclass(frozen=True)
class Header:
    """The header values of one encode, computed before anything is written: ``values``
    (fp32, one per segment: what the payload will hold), from the segment ``sums`` (or
    maxima) and, where computed, the ``rescue`` sums (:mod:`.format`, "Overflow")."""

    fmt: Format
    d: int
    values: torch.Tensor
    sums: torch.Tensor
    rescue: torch.Tensor | None = None

    def bad(self) -> torch.Tensor:
        """Device flag: some header value is inf or nan (nothing is read)."""
        return ~torch.isfinite(self.values).all()

    def first_bad(self) -> tuple[int, float] | None:
        """``(segment, value)`` of the first header value that is not finite, the value
        being the true one in fp64 where the rescue sum holds it (a norm above ``FP32_MAX``),
        else ``inf`` / ``nan`` (an overflowed residual); ``None`` if all are finite. Host
        reads: for error messages only."""
        bad = torch.nonzero(~torch.isfinite(self.values)).view(-1)
        if bad.numel() == 0:
            return None
        i = int(bad[0])
        value = float(self.values[i])
        if self.rescue is not None and math.isfinite(float(self.rescue[i])):
            wide = float(self.rescue[i])
            value = wide / self.d * UNDO_ABS if self.fmt.kind == Kind.SIGN else \
                math.sqrt(wide) * UNDO_SQUARE
        return i, value


#: ``check(header)``: called once per packed encode, before anything is written; may raise
Check = Callable[[Header], None]


def encode(fmt: Format, fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor],
           seed: int, payload: torch.Tensor, backend: str, check: Check | None = None) -> None:
    """Write the payload of ``C(prologue(x))`` and apply the epilogue (see :mod:`.fusion`).
    Formats with a header call ``check`` with it first (nothing written yet)."""
    IMPLS(backend).encode(fmt, fusion, x, state, seed, payload, check)
    payload[fmt.body_bytes(x.numel()) :].zero_()


def decode_sum(fmt: Format, payloads: torch.Tensor, d: int, out: torch.Tensor, scale: float,
               add: bool, backend: str) -> None:
    """``out (+)= scale * sum_i C_i`` over the rows of ``payloads``, in fp32, in row order."""
    IMPLS(backend).decode_sum(fmt, payloads, d, out, scale, add)
