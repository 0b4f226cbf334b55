"""CHOCO-SGD: compressed gossip (Koloskova, Stich, Jaggi, ICML 2019, Algorithm 2).

Each node keeps public copies ``x_hat_j`` of its neighbours' models (here their weighted sum
``s_i = sum_{j != i} w_ij x_hat_j``) and of its own, and sends only compressed corrections::

    x_i^(t+1/2) = x_i^(t) - eta grad F(x_i^(t); xi_i^(t))
    q_i = C(x_i^(t+1/2) - x_hat_i) ;  x_hat_i <- x_hat_i + q_i            (sent to neighbours)
    s_i <- s_i + sum_{j in N_i} w_ij q_j                                   (x_hat_j += q_j)
    x_i^(t+1) = x_i^(t+1/2) + gamma (sum_j w_ij x_hat_j - x_hat_i)
              = x_i^(t+1/2) + gamma (s_i - (1 - w_ii) x_hat_i)

``gamma`` is the consensus step size (default: the compressor's contraction ``alpha`` at the
message size, ``1/(1+omega)`` for an unbiased one, 1 for the identity, with which CHOCO-SGD is
DSGD). The public copies must see every correction, so the graph must be static. One fused
pass per step: ``Fusion(residual="sub", update="add")`` with ``h = x_hat_i``.

Hyperparameters: ``gamma`` in ``(0, 1]`` (Koloskova et al.'s consensus step size: a convex
combination of ``x_i`` and the neighbours' public copies; 1 with the identity is exact
gossip), ``local_steps`` must be 1.
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.comm import graphs
from gradpack.kernels.fusion import Fusion

from . import checks
from .peer import PeerAlgorithm

_CHOCO = Fusion(residual="sub", update="add", beta=1.0)


class CHOCOSGD(PeerAlgorithm):
    name = "choco-sgd"
    needs = "contractive"
    worker_state = ("x", "x_hat", "s")
    ranges = {"gamma": "(0, 1]"}  # the consensus step size

    def __init__(self, compressor, *, graph=None, gamma: float | None = None,
                 local_steps: int = 1, seed: int = 0):
        self.gamma = None if gamma is None else self._hparam("gamma", gamma)
        if checks.integer(self.name, "local_steps", local_steps, "[1, inf)") != 1:
            raise ValueError(f"{self.name}: gossips every iteration (local_steps = 1), got "
                             f"{local_steps}")
        super().__init__(compressor, graph=graph, local_steps=local_steps, seed=seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return {**super().hparams, "gamma": self.gamma}

    def graph_for(self, n: int) -> graphs.Graph:
        g = super().graph_for(n)
        if g.time_varying:
            raise ValueError(f"{self.name}: the public copies x_hat_j need every correction, so "
                             f"the graph must be static; {g.name!r} changes every step (use "
                             "ring or exp)")
        return g

    def gamma_for(self, numel: int) -> float:
        if self.gamma is not None:
            return self.gamma
        c = self.compressor
        return 1.0 / (1.0 + c.omega(numel)) if c.unbiased else c.alpha(numel)

    def _message(self, state, *, step, phase, rank, stream, out):
        return self._encode(_CHOCO, state["x"], {"h": state["x_hat"]}, state, step=step,
                            phase=phase, rank=rank, stream=stream, out=out)

    def _combine(self, state, received, senders, *, step, phase, lr, w_self, w, stream):
        s = self._mix_into(state["s"].clone(), received, senders, step=step, phase=phase,
                           stream=stream, scale=w)
        gamma = self.gamma_for(state["numel"])
        x = torch.add(state["x"], s - state["x_hat"] * (1.0 - w_self), alpha=gamma)
        return {"s": s, "x": x}
