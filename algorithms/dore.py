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

Hyperparameters (seed 002, "Convergence analysis"): ``alpha`` in ``(0, 1]`` (``h_i`` is the
running average ``(1 - alpha) h_i + alpha (h_i + Q(Delta_i))``; both theorems take
``alpha <= (1 + sqrt(1 - delta)) / (2(C+1)) <= 1``), ``beta`` in ``(0, 1]`` (the strongly
convex theorem: ``0 < beta <= 1/(C+1)``), ``eta`` in ``[0, inf)`` (``0``: no error
compensation; the theorem's upper bound depends on ``C``, and on the stability note above),
``gamma`` in ``(0, inf)``; the downlink scale ``beta / gamma`` must be finite and nonzero in
float32 (checked here when ``beta`` is given, at the first step for the default).

The server step is transactional: the peers' payloads are decoded (checked, into scratch),
``q``, the new ``h`` and the new ``e`` are computed into scratch, ``q`` is encoded (which
raises :class:`~gradpack.errors.NonFiniteError` on an overflowed ``q``), the new state is
checked finite (one ``aminmax`` over ``[h; e]``), and ``h``, ``e`` are written last.
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.compressors import Compressor
from gradpack.kernels.fusion import Fusion

from . import checks
from .base import SERVER, Algorithm

_SERVER_FUSION = Fusion(update="error")  # q_hat = Q(q), e <- q - q_hat


class DORE(Algorithm):
    name = "dore"
    needs = "unbiased"
    worker_state = ("h_i",)
    server_state = ("h", "e")
    # seed 002 (module docstring); eta = 0: no error compensation
    ranges = {"alpha": "(0, 1]", "beta": "(0, 1]", "eta": "[0, inf)", "gamma": "(0, inf)"}

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
        # None: the seed's default for the compressor's omega at the message size (*_for)
        self.alpha, self.beta, self.eta = (
            None if v is None else self._hparam(k, v)
            for k, v in (("alpha", alpha), ("beta", beta), ("eta", eta)))
        self.gamma = self._hparam("gamma", gamma)
        if self.beta is not None:
            checks.fp32_scalar(self.name, "beta / gamma", self.beta / self.gamma)
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

    def downlink_scale(self, numel: int) -> float:
        """``-beta / gamma``, the direction's factor on ``q_hat`` (checked finite in fp32)."""
        return -checks.fp32_scalar(self.name, "beta / gamma", self.beta_for(numel) / self.gamma)

    def _server(self, state: dict[str, Any], gathered: torch.Tensor, step: int,
                stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed ``q_hat`` and the new ``[h; e]`` (scratch, not yet checked finite);
        writes no state. The peers' payloads are checked by their decode and ``q`` by its
        encode, both before anything is written."""
        numel, _ = self.check_state(state)
        h, e = state["h"], state["e"]
        new = torch.empty(2, numel, dtype=h.dtype, device=h.device)  # [h^{k+1}; e^{k+1}]
        h_new, e_new = new[0], new[1]
        delta_hat = self._decode_mean(state, gathered, step=step, stream=stream, out=h_new)
        q = torch.add(h, delta_hat)  # g_hat^k = h^k + Delta_hat^k
        q.mul_(-self.gamma).add_(torch.mul(e, self.eta_for(numel), out=e_new))  # q^k (e_new:
        # scratch for eta e^k; the encode overwrites it with e^{k+1} = q^k - q_hat^k)
        delta_hat.mul_(self.alpha_for(numel)).add_(h)  # h^{k+1} = h^k + alpha Delta_hat^k
        down = self._compress(self.compressor, _SERVER_FUSION, q, {"h": e_new},
                              seed=self.seed_for(step, SERVER, stream), out=None,
                              dtype=e.dtype, guard=False)
        return down, new

    @staticmethod
    def _commit(state: dict[str, Any], new: torch.Tensor) -> None:
        state["h"].copy_(new[0])
        state["e"].copy_(new[1])

    def server_step(
        self, state: dict[str, Any], gathered: torch.Tensor, *, step: int, stream: int = 0
    ) -> torch.Tensor:
        """Decode the mean residual, update ``h`` and ``e``; returns the packed ``q_hat``."""
        down, new = self._server(state, gathered, step, stream)
        self._require_finite(f"server step {step}", h=new[0], e=new[1])
        self._commit(state, new)
        return down

    def _downlink(self, state, down, step, stream, out) -> torch.Tensor:
        numel, _ = self.check_state(state)
        if not isinstance(down, torch.Tensor) or down.dim() != 1:
            raise ValueError("dore: downlink payload must be a 1-D tensor")
        self._check_out(state, out)
        return self._decode_into(self.compressor, down[None], numel,
                                 [self.seed_for(step, SERVER, stream)], out=out,
                                 scale=self.downlink_scale(numel), add=False,
                                 dtype=self.state_dtype(state))

    def apply_downlink(self, state, down, *, step, stream=0, out=None):
        """``direction = -beta * q_hat / gamma`` (so ``x_hat += beta * q_hat`` at lr = gamma);
        :class:`~gradpack.errors.NonFiniteError` if that overflows."""
        direction = self._downlink(state, down, step, stream, out)
        self._require_finite(f"downlink at step {step}", direction=direction)
        return direction

    def _aggregate(self, state: dict[str, Any], gathered: torch.Tensor, step: int, stream: int,
                   out: torch.Tensor | None) -> torch.Tensor:
        """Every rank runs the server's step on its replica (same seeds, same ``q_hat``); the
        direction is decoded, and checked finite with the new ``h`` and ``e`` (one host
        read), before they are committed."""
        self.downlink_scale(self.check_state(state)[0])  # a bad scale fails before any work
        down, new = self._server(state, gathered, step, stream)
        direction = self._downlink(state, down, step, stream, out)
        self._require_finite(f"server step {step}", h=new[0], e=new[1], direction=direction)
        self._commit(state, new)
        return direction
