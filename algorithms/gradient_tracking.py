"""Gradient tracking (seed 001, "Gradient tracking algorithm"; Xu et al. 2015, Di Lorenzo and
Scutari 2016, Nedic et al. 2017): DSGD whose step follows a tracker ``y_i`` of the average
gradient, which removes DSGD's data-heterogeneity term.

Seed 001::

    x_i^(k+1) = sum_j w_ij (x_j^(k) - gamma y_j^(k))
    y_i^(k+1) = sum_j w_ij (y_j^(k) + grad F(x_j^(k+1)) - grad F(x_j^(k)))

Per iteration ``k`` here (two gossip exchanges of d values each, over ``W^(k)``)::

    y_i <- sum_j w_ij (y_j + g_j^(k) - g_j^(k-1))     (phase 0: send y_j + g_j^k - g_j^(k-1))
    x_i <- sum_j w_ij (x_j - gamma y_j)               (phase 1: send the half step)

with ``y^(-1) = g^(-1) = 0``, i.e. the seed's recursion with the tracker mixed before it is
used (``y^(0) = W g^(0)`` instead of ``g^(0)``); both keep ``mean_i y_i = mean_i g_i`` at every
step, which is what tracking means. Messages are the compressor applied to ``y`` and ``x``:
use an exact or near-exact one (see :mod:`.dsgd`).
"""

from __future__ import annotations

import torch

from gradpack.kernels.fusion import PLAIN

from . import checks
from .dsgd import DSGD


class GradientTracking(DSGD):
    name = "gradient-tracking"
    worker_state = ("x", "y", "g_prev")
    phase_count = 2
    pre_phases = 1  # y is mixed before the step follows it

    def __init__(self, compressor, *, graph=None, local_steps: int = 1, seed: int = 0):
        if checks.integer(self.name, "local_steps", local_steps, "[1, inf)") != 1:
            raise ValueError(f"{self.name}: the tracker needs a gossip every iteration "
                             f"(local_steps = 1), got {local_steps}")
        super().__init__(compressor, graph=graph, local_steps=local_steps, seed=seed)

    def _local(self, state, grad, *, step, lr):
        """``y_i <- y_i + g_i^k - g_i^(k-1)`` (the message of phase 0)."""
        return {"y": torch.add(state["y"], grad).sub_(state["g_prev"]), "g_prev": grad}

    def _message(self, state, *, step, phase, rank, stream, out):
        key = "y" if phase == 0 else "x"
        return self._encode(PLAIN, state[key], {}, state, step=step, phase=phase, rank=rank,
                            stream=stream, out=out)

    def _combine(self, state, received, senders, *, step, phase, lr, w_self, w, stream):
        key = "y" if phase == 0 else "x"
        t = self._mix_into(state[key] * w_self, received, senders, step=step, phase=phase,
                           stream=stream, scale=w)
        if phase == 0:  # the half step x_i - gamma y_i, sent in phase 1
            return {"y": t, "x": torch.sub(state["x"], t, alpha=lr)}
        return {"x": t}
