"""DORE: double residual compression (Liu, Li, Tang, Yan; AISTATS 2020), seed 002.

Seed 002's "Algorithm DORE" with ``R = 0`` (so ``prox`` is the identity)::

  worker i:  Delta_i^k = g_i^k - h_i^k ;  Delta_hat_i^k = Q(Delta_i^k)         (sent up)
             h_i^{k+1} = h_i^k + alpha * Delta_hat_i^k
  server:    Delta_hat^k = (1/n) sum_i Delta_hat_i^k ;  g_hat^k = h^k + Delta_hat^k
             h^{k+1} = h^k + alpha * Delta_hat^k
             q^k = x^{k+1} - x_hat^k + eta * e^k = -gamma * g_hat^k + eta * e^k
             q_hat^k = Q(q^k) ;  e^{k+1} = q^k - q_hat^k                       (q_hat sent down)
  everyone:  x_hat^{k+1} = x_hat^k + beta * q_hat^k

Initialisation ``h^0 = h_i^0 = e^0 = 0`` and ``x_hat_i^0 = x_hat^0 = x^0`` (the seed's). The
model the caller holds is ``x_hat``: ``direction = -beta * q_hat / gamma``, so with
``gamma = lr`` the caller's ``x <- x - lr * direction`` is the seed's update literally;
``gamma = 1`` (default) keeps ``e`` and ``q`` in gradient units with ``lr`` outside. Both
directions are compressed with the same unbiased ``Q``; the downlink is a real packed
message in the server topology (:meth:`DORE.server_step`).

Defaults from the seed's non-convex theorem with ``C = omega``: ``alpha = 1 / (2(C+1))`` and
``beta = 1 / (C+1)``, evaluated at the message size. ``eta`` defaults to ``1 / sqrt(C+1)``:
once ``g_hat`` settles, the error recursion is ``e^{k+1} = Q(q) - q`` with ``q ~ eta e^k``,
so ``E||e^{k+1}||^2 <= C eta^2 ||e^k||^2``, and it is mean-square stable only for
``C eta^2 < 1``; full compensation (``eta = 1``) diverges for ``C >= 1`` (e.g. ``qsgd:1:64``).
Worker step: one fused pass ``Fusion(residual="sub", update="add", beta=alpha)``, ``h = h_i``;
the server's compression is a fused ``Fusion(update="error")`` pass with ``h = e`` (both run
unfused in float64 for float64 state, where DORE reaches float64 accuracy).
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.compressors import Compressor
from gradpack.kernels.fusion import Fusion

from .base import SERVER, Algorithm

_SERVER_FUSION = Fusion(update="error")  # q_hat = Q(q), e <- q - q_hat


class DORE(Algorithm):
    name = "dore"
    needs = "unbiased"
    worker_state = ("h_i",)
    server_state = ("h", "e")

    def __init__(
        self,
        compressor: Compressor,
        *,
        alpha: float | None = None,
        beta: float | None = None,
        eta: float | None = None,
        gamma: float = 1.0,
        seed: int = 0,
    ):
        for name, v in (("alpha", alpha), ("beta", beta)):
            if v is not None and not 0 < v <= 1:
                raise ValueError(f"dore: {name} must be in (0, 1], got {v}")
        if eta is not None and not eta >= 0:
            raise ValueError(f"dore: eta must be >= 0 (0: no error compensation), got {eta}")
        if not gamma > 0:
            raise ValueError(f"dore: gamma must be > 0, got {gamma}")
        self.alpha, self.beta, self.gamma = alpha, beta, float(gamma)
        self.eta = None if eta is None else float(eta)
        super().__init__(compressor, seed=seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "eta": self.eta, "gamma": self.gamma}

    def _omega(self, numel: int) -> float:
        c = self.compressor
        return c.omega(numel) if c.unbiased else 0.0

    def alpha_for(self, numel: int) -> float:
        return self.alpha if self.alpha is not None else 0.5 / (self._omega(numel) + 1.0)

    def beta_for(self, numel: int) -> float:
        return self.beta if self.beta is not None else 1.0 / (self._omega(numel) + 1.0)

    def eta_for(self, numel: int) -> float:
        return self.eta if self.eta is not None else (self._omega(numel) + 1.0) ** -0.5

    def downlink_compressor(self, step: int) -> Compressor:
        return self.compressor

    def fusion(self, step: int, numel: int) -> Fusion:
        return Fusion(residual="sub", update="add", beta=self.alpha_for(numel))

    def fused_state(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"h": state["h_i"]}

    def server_step(
        self, state: dict[str, Any], gathered: torch.Tensor, *, step: int, stream: int = 0
    ) -> torch.Tensor:
        """Decode the mean residual, update ``h`` and ``e``; returns the packed ``q_hat``."""
        numel, _ = self.check_state(state)
        h, e = state["h"], state["e"]
        delta_hat = self._decode_mean(state, gathered, step=step, stream=stream, out=None)
        q = torch.add(h, delta_hat)  # g_hat^k = h^k + Delta_hat^k
        h.add_(delta_hat.mul_(self.alpha_for(numel)))  # h^{k+1} = h^k + alpha Delta_hat^k
        q.mul_(-self.gamma).add_(e * self.eta_for(numel))  # q^k = -gamma g_hat^k + eta e^k
        return self._compress(self.compressor, _SERVER_FUSION, q, {"h": e},
                              seed=self.seed_for(step, SERVER, stream), out=None, dtype=e.dtype)

    def apply_downlink(self, state, down, *, step, stream=0, out=None):
        """``direction = -beta * q_hat / gamma`` (so ``x_hat += beta * q_hat`` at lr = gamma)."""
        numel, _ = self.check_state(state)
        if down.dim() != 1:
            raise ValueError(f"dore: downlink payload must be 1-D, got {list(down.shape)}")
        return self._decode_into(self.compressor, down[None], numel,
                                 [self.seed_for(step, SERVER, stream)], out=out,
                                 scale=-self.beta_for(numel) / self.gamma, add=False,
                                 dtype=self.state_dtype(state))

    def _aggregate(self, state: dict[str, Any], gathered: torch.Tensor, step: int, stream: int,
                   out: torch.Tensor | None) -> torch.Tensor:
        """Every rank runs the server's step on its replica (same seeds, same ``q_hat``)."""
        down = self.server_step(state, gathered, step=step, stream=stream)
        return self.apply_downlink(state, down, step=step, stream=stream, out=out)
