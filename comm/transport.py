"""Transports: move equal-size packed uint8 payloads between ranks, knowing nothing of what
is in them (STYLE.md, rule 3).

A transport hosts some of the ``world_size`` ranks: :class:`LocalTransport` all of them (n
simulated workers in one process), :class:`~.distributed.ProcessGroupTransport` one (a
``torch.distributed`` process). Every method takes the payloads of the hosted ranks as one
``[len(ranks), P]`` uint8 tensor (a 1-D ``[P]`` tensor when one rank is hosted), so the same
driver code runs on both:

- ``all_gather(payloads, async_op=False) -> [world_size, P]`` (or a :class:`Pending`);
- ``gather(payloads, dst=0) -> [world_size, P]`` on a process hosting ``dst``, else ``None``;
- ``broadcast(payload, src=0, nbytes=D) -> [D]``: ``payload`` on the process hosting
  ``src`` (``None`` elsewhere; ``nbytes`` sizes the receive buffer without a handshake).

With a :class:`~.ledger.Ledger` attached, each call records, per hosted rank, the bytes it
handed to the collective.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .ledger import Ledger


class Pending:
    """An issued collective: :meth:`wait` returns its result tensor."""

    def __init__(self, result: torch.Tensor, work=None):
        self._result = result
        self.work = work  # the torch.distributed Work, or None when already complete

    def is_completed(self) -> bool:
        return self.work is None or self.work.is_completed()

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
        return self._result

    def get_future(self) -> torch.futures.Future:
        """A ``torch.futures.Future`` resolving to the result tensor (for DDP comm hooks)."""
        if self.work is None:
            fut: torch.futures.Future = torch.futures.Future()
            fut.set_result(self._result)
            return fut
        result = self._result

        def done(f: torch.futures.Future) -> torch.Tensor:
            f.wait()  # re-raises the collective's error (a dead peer) into the chained future
            return result

        return self.work.get_future().then(done)


class Transport(ABC):
    """Collectives over equal-size uint8 payloads (see the module docstring)."""

    world_size: int
    ranks: tuple[int, ...]

    def __init__(self, ledger: Ledger | None = None):
        if ledger is not None and ledger.world_size != self.world_size:
            raise ValueError(f"transport: ledger is for {ledger.world_size} ranks, the "
                             f"transport has {self.world_size}")
        self.ledger = ledger

    def hosts(self, rank: int) -> bool:
        return rank in self.ranks

    def _rows(self, payloads: torch.Tensor, what: str) -> torch.Tensor:
        """The hosted ranks' payloads as a contiguous ``[len(ranks), P]`` tensor."""
        if not isinstance(payloads, torch.Tensor) or payloads.dtype != torch.uint8:
            raise ValueError(f"{what}: payloads must be a torch.uint8 tensor")
        if payloads.dim() == 1 and len(self.ranks) == 1:
            payloads = payloads[None]
        m = len(self.ranks)
        if payloads.dim() != 2 or payloads.shape[0] != m:
            raise ValueError(f"{what}: expected [{m}, P] payloads for ranks {list(self.ranks)}, "
                             f"got {list(payloads.shape)}")
        if payloads.shape[1] < 1:
            raise ValueError(f"{what}: empty payload")
        return payloads.contiguous()

    def _check_root(self, root: int, what: str) -> None:
        if not isinstance(root, int) or not 0 <= root < self.world_size:
            raise ValueError(f"{what}: root rank must be in [0, {self.world_size}), got {root!r}")

    def _record(self, op: str, handed: int, received_of) -> None:
        if self.ledger is not None:
            for r in self.ranks:
                self.ledger.collective(op, r, handed=handed, received=received_of(r))

    @abstractmethod
    def all_gather(self, payloads: torch.Tensor, *, async_op: bool = False):
        ...

    @abstractmethod
    def gather(self, payloads: torch.Tensor, *, dst: int = 0) -> torch.Tensor | None:
        ...

    @abstractmethod
    def broadcast(self, payload: torch.Tensor | None, *, src: int = 0, nbytes: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
        """``device``: where a receiving rank allocates its buffer."""


class LocalTransport(Transport):
    """All ``world_size`` ranks in this process: the collectives are the identity on the
    stacked payloads (no copies), with the same checks and ledger records."""

    def __init__(self, world_size: int, ledger: Ledger | None = None):
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"transport: world_size must be a positive int, got {world_size!r}")
        self.world_size = world_size
        self.ranks = tuple(range(world_size))
        super().__init__(ledger)

    def all_gather(self, payloads: torch.Tensor, *, async_op: bool = False):
        rows = self._rows(payloads, "all_gather")
        p = rows.shape[1]
        self._record("all_gather", p, lambda r: (self.world_size - 1) * p)
        return Pending(rows) if async_op else rows

    def gather(self, payloads: torch.Tensor, *, dst: int = 0) -> torch.Tensor:
        self._check_root(dst, "gather")
        rows = self._rows(payloads, "gather")
        p = rows.shape[1]
        self._record("gather", p, lambda r: (self.world_size - 1) * p if r == dst else 0)
        return rows

    def broadcast(self, payload: torch.Tensor | None, *, src: int = 0, nbytes: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
        self._check_root(src, "broadcast")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 \
                or payload.dim() != 1 or payload.numel() != nbytes:
            raise ValueError(f"broadcast: the root's payload must be a 1-D uint8 tensor of "
                             f"{nbytes} bytes")
        self._record("broadcast", nbytes, lambda r: 0 if r == src else nbytes)
        return payload
