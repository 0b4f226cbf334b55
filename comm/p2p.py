"""Neighbour exchange of packed payloads: each rank sends its payload to its out-neighbours and
receives one payload from each in-neighbour (decentralized methods over a graph, seed 001).

``exchange(payloads, send_to, recv_from) -> list of [len(recv_from[j]), P]`` for the hosted
ranks ``j``; ``send_to[j]`` / ``recv_from[j]`` are the hosted rank's peer lists (from
:mod:`.graphs`), and the received rows come in ``recv_from`` order. Payloads have one size on
every rank (the algorithm sizes them from ``(numel, step)``), so no handshake precedes a
round. Like the other transports, comm never looks inside a payload.

- :class:`LocalExchange`: all ranks in one process (the simulator): rows are indexed, not
  copied around;
- :class:`ProcessGroupExchange`: one rank per process; one ``batch_isend_irecv`` per round
  (gloo and NCCL), issued from the calling thread in the same order on every rank: ``d_max``
  point-to-point messages per rank, never an all-gather of everything.

With a ledger, each rank's sends are recorded as bytes handed to the uplink (per neighbour
message) and its receives as ``received``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .ledger import Ledger

# The ledger's name for point-to-point sends: uplink bytes a rank hands to the network.
SEND_OP = "send"


def _check_lists(m: int, world: int, send_to, recv_from) -> None:
    if len(send_to) != m or len(recv_from) != m:
        raise ValueError(f"exchange: {m} hosted ranks but {len(send_to)} send lists and "
                         f"{len(recv_from)} receive lists")
    for peers in (*send_to, *recv_from):
        for p in peers:
            if not isinstance(p, int) or not 0 <= p < world:
                raise ValueError(f"exchange: peer ranks must be in [0, {world}), got {p!r}")


def _rows(payloads: torch.Tensor, m: int) -> torch.Tensor:
    if not isinstance(payloads, torch.Tensor) or payloads.dtype != torch.uint8:
        raise ValueError("exchange: payloads must be a torch.uint8 tensor")
    if payloads.dim() == 1 and m == 1:
        payloads = payloads[None]
    if payloads.dim() != 2 or payloads.shape[0] != m or payloads.shape[1] < 1:
        raise ValueError(f"exchange: expected [{m}, P] payloads, got {list(payloads.shape)}")
    return payloads.contiguous()


class LocalExchange:
    """All ``world_size`` ranks in this process."""

    def __init__(self, world_size: int, ledger: Ledger | None = None):
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"exchange: world_size must be a positive int, got {world_size!r}")
        self.world_size = world_size
        self.ranks = tuple(range(world_size))
        self.ledger = ledger

    def exchange(self, payloads: torch.Tensor, send_to: Sequence[Sequence[int]],
                 recv_from: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        n = self.world_size
        rows = _rows(payloads, n)
        _check_lists(n, n, send_to, recv_from)
        for r in range(n):  # every send has its receive: the graph must be consistent
            for dst in send_to[r]:
                if r not in recv_from[dst]:
                    raise ValueError(f"exchange: rank {r} sends to {dst}, which does not "
                                     f"receive from it")
        p = rows.shape[1]
        if self.ledger is not None:
            for r in range(n):
                self.ledger.collective(SEND_OP, r, handed=p * len(send_to[r]),
                                       received=p * len(recv_from[r]))
        return [rows[list(peers)] for peers in recv_from]


class ProcessGroupExchange:
    """One rank per process over a ``torch.distributed`` process group (default: world)."""

    def __init__(self, group: dist.ProcessGroup | None = None, ledger: Ledger | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("ProcessGroupExchange needs torch.distributed initialised "
                             "(init_process_group); use LocalExchange for one process")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.ranks = (self.rank,)
        self.ledger = ledger

    def _global(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def exchange(self, payloads: torch.Tensor, send_to: Sequence[Sequence[int]],
                 recv_from: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        row = _rows(payloads, 1)[0]
        _check_lists(1, self.world_size, send_to, recv_from)
        sends, recvs = list(send_to[0]), list(recv_from[0])
        p = row.numel()
        out = torch.empty(len(recvs), p, dtype=torch.uint8, device=row.device)
        ops = [dist.P2POp(dist.isend, row, self._global(dst), group=self.group)
               for dst in sends]
        ops += [dist.P2POp(dist.irecv, out[j], self._global(src), group=self.group)
                for j, src in enumerate(recvs)]
        if self.ledger is not None:
            self.ledger.collective(SEND_OP, self.rank, handed=p * len(sends),
                                   received=p * len(recvs))
        if ops:
            try:
                for work in dist.batch_isend_irecv(ops):
                    work.wait()
            except RuntimeError as err:
                raise RuntimeError(
                    f"neighbour exchange of {p}-byte payloads failed on rank {self.rank} of "
                    f"{self.world_size} (sending to {sends}, receiving from {recvs}; "
                    f"{type(err).__name__}: {err})") from err
        return [out]

    def check_graph(self, graph) -> None:
        """Raise ``ValueError`` unless every rank runs the same graph (name, n, offsets)."""
        self.check_same(graph=graph.digest())

    def check_same(self, **values: int) -> None:
        """Raise ``ValueError`` unless every rank passes the same ints (e.g. the graph's
        digest), naming the keys and the ranks' values."""
        keys = sorted(values)
        mine = torch.tensor([int(values[k]) for k in keys], dtype=torch.int64)
        if dist.get_backend(self.group) == "nccl":
            mine = mine.cuda()
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine, group=self.group)
        table = torch.stack(out).cpu()
        for j, k in enumerate(keys):
            col = table[:, j]
            if not bool((col == col[0]).all()):
                raise ValueError(f"ranks disagree on {k!r}: {dict(enumerate(col.tolist()))}")
