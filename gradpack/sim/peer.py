"""The simulator's loop for model-per-worker algorithms (:mod:`gradpack.algorithms.peer`):
n workers, each with its own model ``x_i``, one :func:`~gradpack.algorithms.peer_round` per
local iteration over a :class:`~gradpack.comm.LocalTransport` (periodic averages) and a
:class:`~gradpack.comm.p2p.LocalExchange` (gossip).

Recorded at every iterate: the loss and true gradient norm at ``x_bar = mean_i x_i``, and the
consensus distance ``(1/n) sum_i ||x_i - x_bar||^2``; ``extra["workers_x"]`` holds the final
models ``[n, *x0.shape]``. Modelled time with a link: a gossip
exchange costs ``latency + 8 * d_max * P / bandwidth`` (each node pushes its ``d_max``
messages through its own link, all nodes in parallel); an average costs the link's ring
all-gather; local iterations cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from gradpack.algorithms import PeerAlgorithm, peer_round
from gradpack.comm import Ledger, Link, LocalTransport
from gradpack.comm.p2p import LocalExchange
from gradpack.sim.core import OVERFLOW, History, _cumulative, _wire


def gossip_time(link: Link, degree: int, nbytes: int) -> float:
    """Seconds of one neighbour exchange: ``degree`` messages of ``nbytes`` per node."""
    return link.latency + 8 * degree * nbytes / link.bandwidth if degree else 0.0


def simulate_peer(
    alg: PeerAlgorithm,
    grad_fns: Sequence[Callable[[torch.Tensor, int], torch.Tensor]],
    x0: torch.Tensor,
    *,
    steps: int,
    lr: Callable[[int], float],
    loss_fn: Callable[[torch.Tensor], float] | None = None,
    grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    link: Link | None = None,
    progress: Callable[[int], None] | None = None,
) -> History:
    n = len(grad_fns)
    flat = x0.detach().reshape(-1)
    d, dtype = flat.numel(), flat.dtype
    graph = alg.graph_for(n)
    ledger = Ledger(n)
    transport = LocalTransport(n, ledger=ledger)
    exchange = LocalExchange(n, ledger=ledger)
    states = [alg.init_state(d, flat.device, world_size=n, rank=i, dtype=dtype, x0=flat)
              for i in range(n)]

    loss = np.full(steps + 1, np.nan) if loss_fn is not None else None
    gns = np.full(steps + 1, np.nan) if grad_fn is not None else None
    consensus = np.full(steps + 1, np.nan)
    time = np.zeros(steps + 1) if link is not None else None
    x_bar = flat.clone()

    def observe(k: int) -> bool:
        xs = torch.stack([s["x"] for s in states])
        torch.mean(xs, dim=0, out=x_bar)
        ok = bool(torch.isfinite(xs).all())
        if ok:
            consensus[k] = float(((xs - x_bar) ** 2).sum(dim=1).mean())
        if loss is not None and ok:
            loss[k] = float(loss_fn(x_bar))
            ok = bool(np.isfinite(loss[k]))
        if gns is not None and ok:
            gns[k] = float(torch.sum(grad_fn(x_bar).double() ** 2))
            ok = bool(np.isfinite(gns[k]))
        return ok

    done, diverged_at = 0, None
    if not observe(0):
        diverged_at = 0
    for k in range(steps if diverged_at is None else 0):
        grads = [_wire(fn(states[i]["x"], k), d, i, dtype) for i, fn in enumerate(grad_fns)]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            diverged_at = k
            break
        try:
            peer_round(alg, transport, exchange, states, grads, step=k, lr=lr(k))
        except OVERFLOW:  # a message overflowed float32 (e.g. DORE's q): diverged
            diverged_at = k
            break
        done = k + 1
        if time is not None:
            time[k + 1] = time[k] + _round_time(alg, graph, link, n, d, k)
        if progress is not None:
            progress(k)
        if not observe(k + 1):
            diverged_at = k + 1
            break

    if time is not None:
        time[done + 1:] = np.nan
    return History(
        algorithm=alg.name, compressor=alg.compressor.spec, hparams=alg.hparams, world_size=n,
        topology=alg.kind if graph is None else f"gossip:{graph.name}",
        steps=np.arange(steps + 1), x=x_bar.reshape(x0.shape).clone(), ledger=ledger,
        loss=loss, grad_norm_sq=gns, time=time, diverged_at=diverged_at, consensus=consensus,
        extra={"workers_x": torch.stack([s["x"] for s in states]).reshape(n, *x0.shape)},
        **_cumulative(ledger, steps, done),
    )


def _round_time(alg, graph, link: Link, n: int, d: int, k: int) -> float:
    phases = alg.phases(k)
    nbytes = alg.payload_bytes(d, k)
    if not phases:
        return 0.0
    if graph is None:
        return len(phases) * link.round_time("allgather", n, nbytes)
    return len(phases) * gossip_time(link, graph.degree(k), nbytes)
