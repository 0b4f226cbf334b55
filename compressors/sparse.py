"""What Top-K and Random-K share: the count ``K`` from a spec's ``R``.

``R`` is either a ratio in ``(0, 1]`` written with a decimal point or exponent
(``0.01``, ``1e-3``, ``1.0``), giving ``K = max(1, floor(R * d + 1/2))``, or an integer
count (``100``), giving ``K = min(R, d)``. ``K`` depends only on ``(spec, d)``, so the
payload size does too.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import checks
from .base import Compressor
from .spec import parse_int


def parse_count(text: str, spec: str) -> tuple[float | None, int | None]:
    """``(ratio, None)`` or ``(None, count)`` from the ``R`` of a sparsifier spec."""
    if any(ch in text for ch in ".eE") or text.lower() in ("inf", "nan"):
        try:
            ratio = float(text)
        except ValueError:
            raise ValueError(f"R must be a ratio in (0, 1] or an integer count in spec "
                             f"{spec!r}, got {text!r}") from None
        if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
            raise ValueError(f"ratio R must be in (0, 1] in spec {spec!r}, got {text!r}")
        return ratio, None
    return None, parse_int(text, "count R", spec)


class Sparsifier(Compressor):
    """A compressor that sends ``K`` of the ``d`` coordinates (``K`` from :func:`parse_count`)."""

    def __init__(self, ratio: float | None = None, count: int | None = None, **kw):
        super().__init__(**kw)
        if (ratio is None) == (count is None):
            raise ValueError(f"{self.name}: give exactly one of ratio and count")
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real)
                                  or not (math.isfinite(ratio) and 0.0 < ratio <= 1.0)):
            raise ValueError(f"{self.name}: ratio must be in (0, 1], got {ratio!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise ValueError(f"{self.name}: count must be a positive int, got {count!r}")
        self.ratio = None if ratio is None else float(ratio)
        self.count = count
        # reusable work buffers of the torch path (sized by the largest input seen);
        # a compressor object is therefore not meant to encode from two threads at once
        self._scratch: dict = {}

    def __getstate__(self) -> dict:
        """Pickles (checkpoints, DDP hook state) carry the configuration, not the buffers."""
        return {**self.__dict__, "_scratch": {}}

    def k(self, numel: int) -> int:
        """Coordinates sent for ``numel`` elements."""
        d = self._check_numel(numel)
        if self.count is not None:
            return min(self.count, d)
        return min(d, max(1, math.floor(self.ratio * d + 0.5)))

    def _value_fault(self, payloads: torch.Tensor, numel: int) -> str | None:
        """The first non-finite of the ``K`` fp32 values at the start of each row."""
        bad = checks.first_bad(payloads[:, : 4 * self.k(numel)].view(torch.float32),
                               nonnegative=False)
        return None if bad is None else f"row {bad[0]}, value {bad[1]} is {bad[2]}"

    def _spec_args(self) -> str:
        return repr(self.ratio) if self.ratio is not None else str(self.count)
