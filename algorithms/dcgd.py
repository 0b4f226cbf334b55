"""DCGD: distributed compressed gradient descent (QSGD when the compressor is ``qsgd``).

Seed 004 ("Distributed Compressed Gradient Descent") and seed 000 (QSGD)::

    x^{k+1} = x^k - gamma * (1/n) sum_i C(grad f_i(x^k))

No state. With an unbiased compressor this is unbiased SGD with extra variance
``omega``; with a biased one it can diverge (seed 004's Top-1 example, tested in
``tests/test_reproductions.py``), hence the :class:`~.base.CompressorWarning`.
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.kernels.fusion import PLAIN, Fusion

from .base import Algorithm


class DCGD(Algorithm):
    name = "dcgd"
    needs = "any"

    def fusion(self, step: int, numel: int) -> Fusion:
        return PLAIN  # C(grad f_i(x^k)), nothing fused

    def _aggregate(self, state: dict[str, Any], gathered: torch.Tensor, step: int, stream: int,
                   out: torch.Tensor | None) -> torch.Tensor:
        """``(1/n) sum_i C(grad f_i(x^k))`` in one decode-and-sum pass."""
        direction = self._decode_mean(state, gathered, step=step, stream=stream, out=out)
        self._require_finite(f"aggregate at step {step}", direction=direction)
        return direction
