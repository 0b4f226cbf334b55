"""One local iteration of a :class:`~.peer.PeerAlgorithm` over a transport (for the periodic
average: its all-gather) and a neighbour exchange (for gossip: :mod:`gradpack.comm.p2p`).

The driver the simulator and the distributed path share. Each hosted rank's messages go in
the ledger with the algorithm's bits and payload bytes: one message per receiver for gossip
(``d_max`` per phase), one per all-gather for the average, next to the bytes the transport and
the exchange were handed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradpack.comm import Transport

from . import checks
from .peer import PeerAlgorithm


def peer_round(
    alg: PeerAlgorithm,
    transport: Transport,
    exchange,
    states: Sequence[dict[str, Any]],
    grads: Sequence[torch.Tensor] | None,
    *,
    step: int,
    lr: float,
    stream: int = 0,
) -> None:
    """Local iteration ``step`` for the ranks ``transport.ranks`` (``states[j]`` and
    ``grads[j]`` belong to ``transport.ranks[j]``); updates the states in place.
    ``exchange`` (a :class:`~gradpack.comm.p2p.LocalExchange` or ``ProcessGroupExchange``
    hosting the same ranks) is needed only by gossip algorithms. ``grads=None`` skips the
    local update: the caller's optimizer has already stepped ``state["x"]`` (the model
    averager, :mod:`gradpack.averaging`)."""
    if not isinstance(alg, PeerAlgorithm):
        raise ValueError(f"peer_round runs model-per-worker algorithms; {alg.name} is run by "
                         "gradpack.algorithms.communicate")
    ranks = transport.ranks
    if len(states) != len(ranks) or grads is not None and len(grads) != len(ranks):
        raise ValueError(f"{len(ranks)} hosted ranks but {len(states)} states and "
                         f"{len(grads)} gradients")
    lr = checks.real(alg.name, "lr", lr, "(0, inf)")
    numel = states[0]["numel"]
    ledger = transport.ledger
    if ledger is not None:
        ledger.begin_step(step)
    for state, grad in zip(states, grads if grads is not None else [], strict=False):
        if grad.numel() != numel:
            raise ValueError(f"{alg.name}: gradient has {grad.numel()} elements, state {numel}")
        alg.local_update(state, grad.reshape(-1), step=step, lr=lr)
    for phase in range(len(alg.phases(step))):
        run_phase(alg, transport, exchange, states, step=step, phase=phase, lr=lr,
                  stream=stream)


def run_phase(
    alg: PeerAlgorithm,
    transport: Transport,
    exchange,
    states: Sequence[dict[str, Any]],
    *,
    step: int,
    phase: int,
    lr: float,
    stream: int = 0,
) -> None:
    """Exchange ``phase`` of iteration ``step`` (message, transport, combine) for the hosted
    ranks; :func:`peer_round` runs them all, the model averager splits them around the
    caller's optimizer step (``lr = 0``: the caller applies the step)."""
    lr = checks.real(alg.name, "lr", lr, "[0, inf)")
    kinds = alg.phases(step)
    if not 0 <= phase < len(kinds):
        raise ValueError(f"{alg.name}: iteration {step} has {len(kinds)} exchanges, not "
                         f"phase {phase}")
    kind = kinds[phase]
    ranks, n = transport.ranks, transport.world_size
    numel = states[0]["numel"]
    ledger = transport.ledger
    if ledger is not None:
        ledger.begin_step(step)
    graph = alg.graph_for(n)
    nbytes, bits = alg.payload_bytes(numel, step), alg.uplink_bits(numel, step)
    device = states[0]["x"].device
    payloads = torch.empty(len(ranks), nbytes, dtype=torch.uint8, device=device)
    for j, rank in enumerate(ranks):
        alg.message(states[j], step=step, phase=phase, rank=rank, lr=lr, stream=stream,
                    out=payloads[j])
    if kind == "average":
        if ledger is not None:
            for rank in ranks:
                ledger.message(rank, "up", bits=bits, nbytes=nbytes)
        gathered = transport.all_gather(payloads)
        received = [gathered] * len(ranks)
        senders = [list(range(n))] * len(ranks)
        w_self = w = 1.0 / n
    else:
        if exchange is None or tuple(exchange.ranks) != tuple(ranks):
            raise ValueError(f"{alg.name} gossips: pass a neighbour exchange hosting the "
                             f"transport's ranks {list(ranks)}")
        senders = [graph.in_neighbors(r, step) for r in ranks]
        sends = [graph.out_neighbors(r, step) for r in ranks]
        if ledger is not None:
            for rank, peers in zip(ranks, sends, strict=True):
                for _ in peers:
                    ledger.message(rank, "up", bits=bits, nbytes=nbytes)
        received = exchange.exchange(payloads, sends, senders)
        w_self, w = graph.self_weight(step), graph.neighbor_weight(step)
    for j in range(len(ranks)):
        alg.combine(states[j], received[j], senders[j], step=step, phase=phase, lr=lr,
                    w_self=w_self, w=w, stream=stream)
