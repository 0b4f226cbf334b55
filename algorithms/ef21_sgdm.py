"""EF21-SGDM: EF21 with Polyak momentum (Fatkhullin et al. 2023), seed 003's Algorithm 1.

::

    v_i^k = (1 - eta) v_i^{k-1} + eta * grad f_i(x^k, xi_i^k)      (momentum estimator)
    c_i^k = C(v_i^k - g_i^{k-1})                                   (sent)
    g_i^k = g_i^{k-1} + c_i^k ;  g^k = g^{k-1} + (1/n) sum_i c_i^k
    x^{k+1} = x^k - gamma * g^k

Initialisation as in the paper's Algorithm 1 with ``B_init`` = the caller's batch:
``v_i^0 = g_i^0 = grad f_i(x^0, xi_i^0)``, sent uncompressed at step 0 (a fused step with
``eta = 1`` and the ``identity`` compressor). Every later worker step is one fused pass:
``Fusion(momentum=1, eta, residual="sub", update="add", beta=1)``.

Hyperparameter: ``eta`` in ``(0, 1]`` (seed 003's Algorithm 1: "eta in (0, 1]"; ``eta = 1`` is
EF21 on the stochastic gradient).
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.compressors import Compressor
from gradpack.kernels.fusion import Fusion

from .ef21 import EF21


class EF21SGDM(EF21):
    name = "ef21-sgdm"
    worker_state = ("v_i", "g_i")
    momentum = 1
    ranges = {"eta": "(0, 1]"}  # seed 003, Algorithm 1

    def __init__(self, compressor: Compressor, *, eta: float = 0.1, seed: int = 0):
        self.eta = self._hparam("eta", eta)
        super().__init__(compressor, seed=seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"eta": self.eta}

    def fusion(self, step: int, numel: int) -> Fusion:
        # step 0: eta = 1 makes v_i^0 (and u_i^0) the gradient itself
        eta = 1.0 if step == 0 else self.eta
        return Fusion(momentum=self.momentum, eta=eta, residual="sub", update="add", beta=1.0)

    def fused_state(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"v": state["v_i"], "h": state["g_i"]}
