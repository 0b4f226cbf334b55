"""EF21: modern error feedback (Richtarik, Sokolov, Fatkhullin 2021).

Seed 003, "Modern error feedback (2021): EF21-SGD", in Algorithm 1's master/worker form::

    c_i^k     = C(grad f_i(x^k) - g_i^{k-1})                       (sent)
    g_i^k     = g_i^{k-1} + c_i^k
    g^k       = g^{k-1} + (1/n) sum_i c_i^k                        (= mean g_i^k)
    x^{k+1}   = x^k - gamma * g^k

Initialisation (the EF21 paper's): at step 0 every worker sends ``g_i^0 = grad f_i(x^0)``
uncompressed (32 bits per element, counted by the ledger; the papers' plots leave it out),
so ``g^0 = mean_i grad f_i(x^0)``. The worker step is one fused pass:
``Fusion(residual="sub", update="add", beta=1)`` with ``h = g_i`` — at step 0 with the
``identity`` compressor, which from ``g_i = 0`` sets ``g_i = grad f_i(x^0)`` exactly.
The stochastic-gradient variants (:mod:`.ef21_sgdm`, :mod:`.ef21_sgd2m`) differ only in the
momentum prologue.
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.compressors import Compressor
from gradpack.kernels.fusion import Fusion

from .base import Algorithm


class EF21(Algorithm):
    name = "ef21"
    needs = "contractive"
    worker_state = ("g_i",)
    server_state = ("g",)
    #: momentum stages before compression: 0 (EF21), 1 (EF21-SGDM), 2 (EF21-SGD2M)
    momentum = 0

    def __init__(self, compressor: Compressor, *, seed: int = 0):
        super().__init__(compressor, seed=seed)

    def uplink_compressor(self, step: int) -> Compressor:
        return self.dense if step == 0 else self.compressor

    def fusion(self, step: int, numel: int) -> Fusion:
        return Fusion(residual="sub", update="add", beta=1.0)

    def fused_state(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"h": state["g_i"]}

    def _aggregate(self, state: dict[str, Any], gathered: torch.Tensor, step: int, stream: int,
                   out: torch.Tensor | None) -> torch.Tensor:
        """``g <- g + (1/n) sum_i c_i``; returns ``g``. The new ``g`` is summed into the
        direction buffer (``out`` when it fits, else a new tensor) in one decode-and-sum pass,
        checked finite, and only then copied into ``g``."""
        g = state["g"]
        fits = (out is not None and out.dtype == g.dtype and out.shape == g.shape
                and out.device == g.device and out.is_contiguous())
        g_new = out if fits else torch.empty_like(g)
        g_new.copy_(g)
        self._decode_mean(state, gathered, step=step, stream=stream, out=g_new, add=True)
        self._require_finite(f"aggregate at step {step}", g=g_new)
        g.copy_(g_new)
        if out is None or fits:
            return g_new
        return out.copy_(g_new)
