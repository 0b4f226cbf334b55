"""EF21-SGD2M: EF21 with double momentum (Fatkhullin et al. 2023), seed 003.

::

    v_i^k = (1 - eta) v_i^{k-1} + eta * grad f_i(x^k, xi_i^k)
    u_i^k = (1 - eta) u_i^{k-1} + eta * v_i^k
    c_i^k = C(u_i^k - g_i^{k-1}) ;  g_i^k = g_i^{k-1} + c_i^k       (sent: c_i^k)
    g^k = g^{k-1} + (1/n) sum_i c_i^k ;  x^{k+1} = x^k - gamma * g^k

Initialisation ``v_i^0 = u_i^0 = g_i^0 = grad f_i(x^0, xi_i^0)``, sent uncompressed at
step 0. One fused pass per step: ``Fusion(momentum=2, eta, residual="sub", update="add")``.
"""

from __future__ import annotations

from typing import Any

import torch

from .ef21_sgdm import EF21SGDM


class EF21SGD2M(EF21SGDM):
    name = "ef21-sgd2m"
    worker_state = ("v_i", "u_i", "g_i")
    momentum = 2

    def fused_state(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"v": state["v_i"], "u": state["u_i"], "h": state["g_i"]}
