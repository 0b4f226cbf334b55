"""One communication round of an algorithm over a :mod:`gradpack.comm` transport.

The driver the simulator and the distributed tests share (the DDP hook runs the same three
phases on its buckets)::

    allgather:  payload_i = worker_step(...)  ->  all_gather  ->  aggregate(...)
    server:     payload_i = worker_step(...)  ->  gather to the server -> server_step(...)
                ->  broadcast of the downlink message  ->  apply_downlink(...) on every rank

The transport may host several ranks (in-process simulation) or one (a process group).
Every hosted rank's worker state advances; the replicated server state is advanced once per
process, on the first hosted rank's state (in the server topology, on the server's). With a
ledger on the transport, each hosted rank's messages are recorded with the algorithm's bits
and payload bytes, next to the bytes the transport handed to the collectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradpack.comm import Transport

from .base import Algorithm

TOPOLOGIES = ("allgather", "server")


def communicate(
    alg: Algorithm,
    transport: Transport,
    states: Sequence[dict[str, Any]],
    grads: Sequence[torch.Tensor],
    *,
    step: int,
    stream: int = 0,
    topology: str = "allgather",
    server: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run one round for the ranks ``transport.ranks`` (``states[j]``, ``grads[j]`` belong to
    ``transport.ranks[j]``); returns the dense fp32 direction (``x <- x - lr * direction``)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; expected one of {TOPOLOGIES}")
    ranks = transport.ranks
    if len(states) != len(ranks) or len(grads) != len(ranks):
        raise ValueError(f"{len(ranks)} hosted ranks but {len(states)} states and "
                         f"{len(grads)} gradients")
    numel = states[0]["numel"]
    nbytes = alg.payload_bytes(numel, step)
    ledger = transport.ledger
    if ledger is not None:
        ledger.begin_step(step)
    payloads = torch.empty(len(ranks), nbytes, dtype=torch.uint8, device=grads[0].device)
    for j, rank in enumerate(ranks):
        alg.worker_step(states[j], grads[j], step=step, rank=rank, stream=stream, out=payloads[j])
        if ledger is not None:
            ledger.message(rank, "up", bits=alg.uplink_bits(numel, step), nbytes=nbytes)

    if topology == "allgather":
        gathered = transport.all_gather(payloads)
        return alg.aggregate(states[0], gathered, step=step, stream=stream, out=out)

    gathered = transport.gather(payloads, dst=server)
    down = None
    if transport.hosts(server):
        down = alg.server_step(states[ranks.index(server)], gathered, step=step, stream=stream)
    down_bytes = alg.downlink_bytes(numel, step)
    down = transport.broadcast(down, src=server, nbytes=down_bytes, device=payloads.device)
    if ledger is not None:
        for rank in ranks:
            ledger.message(rank, "down", bits=alg.downlink_bits(numel, step), nbytes=down_bytes)
    return alg.apply_downlink(states[0], down, step=step, stream=stream, out=out)
