"""``gradpack.simulate``: n workers in one process, running the same algorithm code and the
same kernels as the distributed path (:func:`gradpack.algorithms.communicate` over a
:class:`~gradpack.comm.LocalTransport`).

Per step ``k``: every worker ``i`` evaluates ``grad_fns[i](x^k, k)`` (its stochastic or
full local gradient; it must not modify ``x``), the round produces the direction, and
``x^{k+1} = x^k - lr_k * direction``. The iterate and all algorithm state (``h``, ``e``,
``v``, ...) keep ``x0``'s dtype (float32 or float64), so a float64 simulation reaches float64
accuracy; only the compressors' wire payloads are float32 (gradients of a float32 run are cast
to float32 as before; fp16/bf16 pass through as they are).

Model-per-worker algorithms (local SGD, SCAFFOLD, DSGD, gradient tracking, CHOCO-SGD:
:mod:`gradpack.algorithms.peer`) run :func:`gradpack.algorithms.peer_round` instead: worker
``i`` evaluates ``grad_fns[i](x_i^k, k)`` at its own model, ``steps`` counts local
iterations, and the history's ``x``, ``loss`` and ``grad_norm_sq`` belong to the average
``x_bar = (1/n) sum_i x_i`` while ``consensus[k] = (1/n) sum_i ||x_i^k - x_bar^k||^2``
(:mod:`gradpack.simulate_peer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gradpack.algorithms import TOPOLOGIES, Algorithm, PeerAlgorithm, communicate
from gradpack.comm import Ledger, Link, LocalTransport
from gradpack.errors import CorruptPayloadError, NonFiniteError

GradFn = Callable[[torch.Tensor, int], torch.Tensor]
#: a message that overflowed float32: non-finite input to a compressor, or an encoded payload
#: whose scale is inf (a QSGD bucket norm past 3.4e38); in one process nothing else corrupts
OVERFLOW = (NonFiniteError, CorruptPayloadError)


@dataclass
class History:
    """What a simulation recorded. Arrays have ``steps + 1`` rows: row ``k`` belongs to the
    iterate ``x^k`` (row 0 to ``x0``) and holds the cumulative traffic that produced it.

    ``bits_up`` / ``bits_down``: int64 ``[steps+1, n]``, algorithmic bits each worker sent /
    received (the papers' count); ``bytes_up`` / ``bytes_down``: payload bytes with padding.
    ``loss`` / ``grad_norm_sq``: float64 ``[steps+1]`` (``None`` without ``loss_fn`` /
    ``grad_fn``). ``time``: modelled seconds (``None`` without a link). ``consensus``: float64
    ``[steps+1]``, the mean over workers of ``||x_i - x_bar||^2`` (zero for the methods with
    one shared model); ``messages_up``: int64 ``[steps+1, n]``, cumulative messages each worker
    sent. After a divergence (a non-finite gradient or loss) the remaining rows are nan and
    ``diverged_at`` is the step.
    """

    algorithm: str
    compressor: str
    hparams: dict[str, Any]
    world_size: int
    topology: str
    steps: np.ndarray
    bits_up: np.ndarray
    bits_down: np.ndarray
    bytes_up: np.ndarray
    bytes_down: np.ndarray
    x: torch.Tensor
    ledger: Ledger
    loss: np.ndarray | None = None
    grad_norm_sq: np.ndarray | None = None
    time: np.ndarray | None = None
    diverged_at: int | None = None
    consensus: np.ndarray | None = None
    messages_up: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def bits_per_worker(self, which: str = "up") -> np.ndarray:
        """Mean over workers of the cumulative bits: ``"up"``, ``"down"`` or ``"total"``."""
        parts = {"up": (self.bits_up,), "down": (self.bits_down,),
                 "total": (self.bits_up, self.bits_down)}
        if which not in parts:
            raise ValueError(f"which must be 'up', 'down' or 'total', got {which!r}")
        return sum(p.astype(np.float64) for p in parts[which]).mean(axis=1)


def _lr_at(lr: float | Callable[[int], float], step: int) -> float:
    value = lr(step) if callable(lr) else lr
    if not value > 0:
        raise ValueError(f"lr must be > 0, got {value} at step {step}")
    return float(value)


def simulate(
    algorithm: Algorithm,
    grad_fns: Sequence[GradFn],
    x0: torch.Tensor,
    *,
    steps: int,
    lr: float | Callable[[int], float],
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor], float] | None = None,
    grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    topology: str = "allgather",
    link: Link | None = None,
    progress: Callable[[int], None] | None = None,
) -> History:
    """Run ``algorithm`` for ``steps`` steps on ``n = len(grad_fns)`` simulated workers.

    ``seed`` keys the compressors' randomness (``algorithm.with_seed(seed)``); the workers'
    own sampling is ``grad_fns``' business. ``loss_fn(x)`` and ``grad_fn(x)`` (the true
    averaged gradient, for ``grad_norm_sq``) are evaluated at every iterate. ``topology``:
    ``"allgather"`` (every rank decodes all payloads; no downlink message) or ``"server"``
    (gather, server step, broadcast of the packed downlink: DORE's compressed ``q_hat``, the
    dense direction for the others). ``progress(k)`` is called after each step.
    """
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be a gradpack Algorithm (gradpack.algorithms."
                         f"from_spec), got {type(algorithm).__name__}")
    if isinstance(algorithm, PeerAlgorithm):
        if topology != "allgather":
            raise ValueError(f"{algorithm.name} keeps a model per worker and communicates over "
                             "its graph (or by averaging); the server topology does not apply")
    elif topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; expected one of {TOPOLOGIES}")
    n = len(grad_fns)
    if n < 1:
        raise ValueError("simulate needs at least one worker (grad_fns is empty)")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not isinstance(x0, torch.Tensor) or x0.dtype not in (torch.float32, torch.float64):
        raise ValueError("x0 must be a float32 or float64 tensor")
    alg = algorithm.with_seed(seed)
    if isinstance(alg, PeerAlgorithm):
        from gradpack.sim.peer import simulate_peer

        return simulate_peer(alg, grad_fns, x0, steps=steps, lr=lambda k: _lr_at(lr, k),
                             loss_fn=loss_fn, grad_fn=grad_fn, link=link, progress=progress)
    x = x0.detach().clone().reshape(-1)
    d = x.numel()
    ledger = Ledger(n)
    transport = LocalTransport(n, ledger=ledger)
    states = [alg.init_state(d, x.device, world_size=n, rank=i, dtype=x.dtype)
              for i in range(n)]
    direction = torch.empty(d, dtype=x.dtype, device=x.device)

    loss = np.full(steps + 1, np.nan) if loss_fn is not None else None
    gns = np.full(steps + 1, np.nan) if grad_fn is not None else None
    time = np.zeros(steps + 1) if link is not None else None
    diverged_at = None

    def observe(k: int) -> bool:
        ok = bool(torch.isfinite(x).all())
        if loss is not None and ok:
            loss[k] = float(loss_fn(x))
            ok = bool(np.isfinite(loss[k]))
        if gns is not None and ok:
            gns[k] = float(torch.sum(grad_fn(x).double() ** 2))
            ok = bool(np.isfinite(gns[k]))
        return ok

    done = 0
    if not observe(0):
        diverged_at = 0
    for k in range(steps if diverged_at is None else 0):
        grads = [_wire(fn(x, k), d, i, x.dtype) for i, fn in enumerate(grad_fns)]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            diverged_at = k
            break
        try:
            communicate(alg, transport, states, grads, step=k, topology=topology, out=direction)
        except OVERFLOW:  # a message overflowed float32 (e.g. DORE's q): diverged
            diverged_at = k
            break
        x.sub_(direction, alpha=_lr_at(lr, k))
        done = k + 1
        if time is not None:
            time[k + 1] = time[k] + link.round_time(
                topology, n, alg.payload_bytes(d, k),
                alg.downlink_bytes(d, k) if topology == "server" else 0)
        if progress is not None:
            progress(k)
        if not observe(k + 1):
            diverged_at = k + 1
            break

    cum = _cumulative(ledger, steps, done)
    if time is not None:
        time[done + 1:] = np.nan
    return History(
        algorithm=alg.name, compressor=alg.compressor.spec, hparams=alg.hparams,
        world_size=n, topology=topology, steps=np.arange(steps + 1), x=x.reshape(x0.shape),
        ledger=ledger, loss=loss, grad_norm_sq=gns, time=time, diverged_at=diverged_at,
        consensus=np.where(np.arange(steps + 1) <= done, 0.0, np.nan), **cum,
    )


def _wire(g: torch.Tensor, d: int, i: int, dtype: torch.dtype) -> torch.Tensor:
    """Worker ``i``'s gradient as the algorithm takes it: float64 kept for float64 state,
    else float64 cast to float32."""
    if not isinstance(g, torch.Tensor) or g.numel() != d:
        raise ValueError(f"grad_fns[{i}] must return a tensor of {d} elements")
    g = g.reshape(-1)
    if dtype == torch.float64:
        return g if g.dtype == torch.float64 else g.to(torch.float64)
    return g.to(torch.float32) if g.dtype == torch.float64 else g


def _cumulative(ledger: Ledger, steps: int, done: int) -> dict[str, np.ndarray]:
    n = ledger.world_size
    _, hist = ledger.history()
    out = {}
    for name in ("bits_up", "bits_down", "bytes_up", "bytes_down", "messages_up"):
        arr = np.zeros((steps + 1, n), dtype=np.int64)
        if done:
            arr[1:done + 1] = np.cumsum(hist[name][:done], axis=0)
        arr[done + 1:] = arr[done]
        out[name] = arr
    return out
