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

    def __init__(self, compressor: Compressor, *, local_steps: int = 1, server_lr: float = 1.0,
                 graph=None, seed: int = 0):
        if not server_lr > 0:
            raise ValueError(f"{self.name}: server_lr must be > 0, got {server_lr}")
        self.server_lr = float(server_lr)
        super().__init__(compressor, graph=graph, local_steps=local_steps, seed=seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return {**super().hparams, "server_lr": self.server_lr}

    def message(self, state, *, step, phase, rank, lr, stream=0, out=None):
        delta = state["x"] - state["x_ref"]
        return self._encode(_EF, delta, {"h": state["e"]}, state, step=step, phase=phase,
                            rank=rank, stream=stream, out=out)

    def combine(self, state, received, senders, *, step, phase, lr, w_self, w, stream=0):
        """``x^(r+1) = x^(r) + eta_s mean_i Delta_i``; every worker restarts from it."""
        x_ref = state["x_ref"]
        self._mix_into(x_ref, received, senders, step=step, phase=phase, stream=stream,
                       scale=self.server_lr * w)
        state["x"].copy_(x_ref)
