"""EF14: error feedback of Seide et al. (2014), in seed 003's form.

Seed 003, "Error feedback (2014): EF14-SGD"; seed 004, "EF-SGD"::

    Delta_i^k = C(e_i^k + gamma * grad f_i(x^k))                     (sent)
    e_i^{k+1} = e_i^k + gamma * grad f_i(x^k) - Delta_i^k
    x^{k+1}   = x^k - (1/n) sum_i Delta_i^k

Initialisation ``e_i^0 = 0``. The memory holds ``gamma * grad``; the caller applies
``x <- x - lr * direction`` with ``direction = (1/n) sum_i Delta_i / gamma``, so with
``gamma = lr`` this is the seed's recursion exactly. ``gamma = 1`` (the default) keeps the
memory in gradient units with ``lr`` outside (the same iterates for positively homogeneous
compressors such as Top-K and scaled sign). The worker step is one fused pass:
``Fusion(residual="error", gamma, update="error")`` with ``h = e_i``.

Hyperparameter: ``gamma`` in ``(0, inf)`` (seed 003: "gamma > 0 is the step-size"), with
``1 / gamma`` finite in float32 too (the aggregate's scale).
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.compressors import Compressor
from gradpack.kernels.fusion import Fusion

from . import checks
from .base import Algorithm


class EF14(Algorithm):
    name = "ef14"
    needs = "contractive"
    worker_state = ("e_i",)
    ranges = {"gamma": "(0, inf)"}  # seed 003

    def __init__(self, compressor: Compressor, *, gamma: float = 1.0, seed: int = 0):
        self.gamma = self._hparam("gamma", gamma)
        checks.fp32_scalar(self.name, "1 / gamma", 1.0 / self.gamma)
        super().__init__(compressor, seed=seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"gamma": self.gamma}

    def fusion(self, step: int, numel: int) -> Fusion:
        return Fusion(residual="error", gamma=self.gamma, update="error")

    def fused_state(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"h": state["e_i"]}

    def _aggregate(self, state: dict[str, Any], gathered: torch.Tensor, step: int, stream: int,
                   out: torch.Tensor | None) -> torch.Tensor:
        """``(1/n) sum_i Delta_i / gamma`` in one decode-and-sum pass."""
        direction = self._decode_mean(
            state, gathered, step=step, stream=stream, out=out, scale=1.0 / self.gamma
        )
        self._require_finite(f"aggregate at step {step}", direction=direction)
        return direction
