"""SCAFFOLD (Karimireddy et al., ICML 2020), seed 000's "Scaffold algorithm": local SGD with
control variates that remove the data-heterogeneity floor.

::

    x_i^(r,0) = x^(r)
    x_i^(r,k+1) = x_i^(r,k) - gamma (grad F(x_i^(r,k); xi) - c_i^(r) + c^(r))     (K local steps)
    c_i^(r+1) = (1/K) sum_k grad F(x_i^(r,k); xi)                               (c_acc)
    x^(r+1) = (1/n) sum_i x_i^(r,K) ;  c^(r+1) = (1/n) sum_i c_i^(r+1)           (global comm.)

Two messages per round: the model delta, exactly as :mod:`.local_sgd` (error feedback ``e_i``),
and the control-variate update in EF21's form, ``q_i = C(c_acc - c_i)``, ``c_i <- c_i + q_i``,
``c <- c + (1/n) sum_i q_i``, which keeps ``c = mean_i c_i`` exactly under any compressor
(with the identity it is the seed's ``c_i = c_acc``). ``c_i^(0) = c^(0) = 0``: the first round
is plain local SGD. Fused passes: ``Fusion(residual="sub", update="add")`` with ``h = c_i``.
"""

from __future__ import annotations

import torch

from gradpack.kernels.fusion import Fusion

from .local_sgd import LocalSGD

_EF21 = Fusion(residual="sub", update="add", beta=1.0)


class SCAFFOLD(LocalSGD):
    name = "scaffold"
    worker_state = ("x", "x_ref", "e", "c_i", "c", "c_acc")
    phase_count = 2  # the model delta, then the control variate

    def _direction(self, state, grad, *, step):
        """``g - c_i + c``, accumulating ``c_acc += g / K``."""
        c_acc = torch.add(state["c_acc"], grad, alpha=1.0 / self.local_steps)
        return grad - state["c_i"] + state["c"], {"c_acc": c_acc}

    def _message(self, state, *, step, phase, rank, stream, out):
        if phase == 0:
            return super()._message(state, step=step, phase=phase, rank=rank, stream=stream,
                                    out=out)
        return self._encode(_EF21, state["c_acc"], {"h": state["c_i"]}, state, step=step,
                            phase=phase, rank=rank, stream=stream, out=out)

    def _combine(self, state, received, senders, *, step, phase, lr, w_self, w, stream):
        if phase == 0:
            return super()._combine(state, received, senders, step=step, phase=phase, lr=lr,
                                    w_self=w_self, w=w, stream=stream)
        c = self._mix_into(state["c"].clone(), received, senders, step=step, phase=phase,
                           stream=stream, scale=w)
        return {"c": c, "c_acc": torch.zeros_like(c)}
