"""DSGD: decentralized SGD (seed 001, "Decentralized SGD"), local update + partial averaging::

    x_i^(k+1/2) = x_i^(k) - gamma grad F(x_i^(k); xi_i^(k))          (local update)
    x_i^(k+1)   = sum_{j in N_i} w_ij x_j^(k+1/2)                      (partial averaging)

over a (possibly time-varying) graph ``W^(k)`` (:mod:`gradpack.comm.graphs`): each node sends
its half-step model to its out-neighbours, ``d_max`` messages per iteration (one on the
one-peer exponential graph). With ``local_steps = K`` the gossip happens every K-th iteration
(local DSGD, Koloskova et al. 2020). A node mixes its own model exactly and its neighbours'
as received; the messages are the compressor applied to the model itself, so use an exact
or near-exact one (identity, fp16, bf16) — for real compression use ``choco-sgd``.
"""

from __future__ import annotations

import warnings

from gradpack.kernels.fusion import PLAIN

from .base import _NEAR_EXACT, CompressorWarning, _alpha, _omega
from .peer import PeerAlgorithm


def lossy(c) -> bool:
    """Whether compressor ``c`` is more than a float cast (fp16/bf16) away from exact."""
    return _omega(c) > 0 if c.unbiased else _alpha(c) < _NEAR_EXACT


class DSGD(PeerAlgorithm):
    name = "dsgd"
    needs = "exact"
    worker_state = ("x",)

    def _check_compressor_class(self) -> None:
        c = self.compressor
        if lossy(c):
            warnings.warn(f"{self.name} sends the models themselves: {c.spec!r} loses most of "
                          "them every step and the iterates do not converge; use choco-sgd "
                          "(compressed gossip with error feedback)", CompressorWarning,
                          stacklevel=4)

    def _message(self, state, *, step, phase, rank, stream, out):
        return self._encode(PLAIN, state["x"], {}, state, step=step, phase=phase, rank=rank,
                            stream=stream, out=out)

    def _combine(self, state, received, senders, *, step, phase, lr, w_self, w, stream):
        """``x_i <- w_ii x_i + sum_j w_ij x_j``."""
        x = self._mix_into(state["x"] * w_self, received, senders, step=step, phase=phase,
                           stream=stream, scale=w)
        return {"x": x}
