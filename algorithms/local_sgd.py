"""Local SGD / FedAvg (seed 000, "Lazy communication"): K local steps, then the models' average.

Seed 000's FedAvg form, with the round's model delta sent through the compressor with error
feedback (EF14's memory ``e_i``, seed 003) and an optional server step size ``eta_s``::

    x_i^(r,0) = x^(r)
    x_i^(r,k+1) = x_i^(r,k) - gamma grad F(x_i^(r,k); xi_i^(r,k))        k = 0..K-1 (local)
    Delta_i = C(e_i + x_i^(r,K) - x^(r)) ;  e_i <- e_i + x_i^(r,K) - x^(r) - Delta_i  (sent)
    x^(r+1) = x^(r) + eta_s (1/n) sum_i Delta_i                          (global comm.)

With the identity compressor and ``eta_s = 1`` this is ``x^(r+1) = (1/n) sum_i x_i^(r,K)``
(to the float32 rounding of the deltas on the wire, which ``e_i`` feeds back), and
``local_steps = 1`` is parallel SGD. ``x_ref`` holds ``x^(r)``, the same on every rank. One
fused pass per round: ``Fusion(residual="error", update="error")`` with ``h = e_i``.

Hyperparameters: ``local_steps`` an int in ``[1, inf)`` (seed 000's K), ``server_lr`` in
``(0, inf)`` (the server step size ``eta_s`` of FedAvg with server learning rate; 1 is
plain averaging).
"""

from __future__ import annotations

from typing import Any

from gradpack.compressors import Compressor
from gradpack.kernels.fusion import Fusion

from .peer import PeerAlgorithm

_EF = Fusion(residual="error", gamma=1.0, update="error")


class LocalSGD(PeerAlgorithm):
    name = "local-sgd"
    needs = "error-feedback"  # any compressor: the memory e_i corrects a biased one
    kind = "average"
    worker_state = ("x", "x_ref", "e")
    model_copies = ("x", "x_ref")
    ranges = {"server_lr": "(0, inf)"}

    def __init__(self, compressor: Compressor, *, local_steps: int = 1, server_lr: float = 1.0,
                 graph=None, seed: int = 0):
        self.server_lr = self._hparam("server_lr", server_lr)
        super().__init__(compressor, graph=graph, local_steps=local_steps, seed=seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return {**super().hparams, "server_lr": self.server_lr}

    def _message(self, state, *, step, phase, rank, stream, out):
        delta = state["x"] - state["x_ref"]
        return self._encode(_EF, delta, {"h": state["e"]}, state, step=step, phase=phase,
                            rank=rank, stream=stream, out=out)

    def _combine(self, state, received, senders, *, step, phase, lr, w_self, w, stream):
        """``x^(r+1) = x^(r) + eta_s mean_i Delta_i``; every worker restarts from it."""
        x_ref = self._mix_into(state["x_ref"].clone(), received, senders, step=step,
                               phase=phase, stream=stream, scale=self.server_lr * w)
        return {"x_ref": x_ref, "x": x_ref}
