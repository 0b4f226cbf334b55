"""The bit ledger: what the algorithms say they send, and what the collectives were handed.

Two kinds of records, per step and per rank:

- **messages** (``Ledger.message``), written by the algorithm driver: the bits of one
  uplink or downlink message as the papers count them (a compressor's ``wire_bits``, or
  32 bits per element for an uncompressed message such as EF21's ``g_i^0``), and the bytes
  of its packed payload (``payload_bytes``: the bits rounded up to bytes plus the compressors'
  documented alignment padding, fewer than ``align`` bytes);
- **collectives** (``Ledger.collective``), written by the transport: the bytes each rank
  handed to each collective. Uplink collectives are ``all_gather`` and ``gather``, the
  downlink one is ``broadcast`` (every rank hands it a buffer of the message's size: the root
  filled, the others to be filled). ``received`` bytes are kept for information;
- **server downlink** (``Ledger.server_downlink``): in the all-gather topology nothing is
  broadcast, but the papers still count the server's message to each worker; drivers record
  those bits here (``bits_down_server``), apart from the bits that really travelled.

Drivers record their messages with :func:`record_round` (the simulator's round and the DDP
hook share it); transports record their collectives themselves.

:meth:`Ledger.check` asserts, for every step and rank, that the payload bytes of the messages
equal the bytes handed to the collectives of that direction, exactly; :meth:`Ledger.message`
checks ``0 <= nbytes - ceil(bits / 8) < align`` for every message as it is recorded.
Counts are Python ints held in int64 arrays (no overflow below 2**63 bits).

Checkpoints: :meth:`Ledger.state_dict` holds the totals and the step in progress only, as
int64 tensors and plain values (a default ``torch.load``, ``weights_only=True``, reads it), so
its size does not grow with the run. The per-step history stays in memory
(``keep_history``) and goes to the run log: ``log`` is called with ``(step, row)`` as each
step closes (``row``: field -> list of per-rank ints); :class:`JsonLinesLog` appends it to a
file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from gradpack.errors import LedgerMismatch

DIRECTIONS = ("up", "down")
OP_DIRECTION = {"all_gather": "up", "gather": "up", "send": "up", "broadcast": "down"}
#: counters kept per rank, in this order
FIELDS = ("bits_up", "bits_down", "bytes_up", "bytes_down", "handed_up", "handed_down",
          "received", "messages_up", "messages_down", "bits_down_server")
_IDX = {name: i for i, name in enumerate(FIELDS)}


StepLog = Callable[[int, dict[str, list[int]]], None]


class Ledger:
    """Per-step and cumulative counters for ``world_size`` ranks.

    A process that hosts one rank of a process group records only that rank's column; the
    in-process transport records all of them. ``keep_history=False`` keeps the totals and
    the current step only in memory (long DDP runs); ``log`` receives every closed step.
    """

    def __init__(self, world_size: int, *, align: int = 8, keep_history: bool = True,
                 log: StepLog | None = None):
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"ledger: world_size must be a positive int, got {world_size!r}")
        self.world_size = world_size
        self.align = int(align)
        self.keep_history = bool(keep_history)
        self.log = log
        self.step: int | None = None
        self._current = np.zeros((len(FIELDS), world_size), dtype=np.int64)
        self._total = np.zeros_like(self._current)
        self._steps: list[int] = []
        self._history: list[np.ndarray] = []

    # -- recording ------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Start recording ``step`` (idempotent for the step in progress)."""
        if step == self.step:
            return
        if self.step is not None and step < self.step:
            raise ValueError(f"ledger: step {step} after step {self.step}")
        self._close_step()
        self.step = step

    def _close_step(self) -> None:
        if self.step is not None and self.keep_history:
            self._steps.append(self.step)
            self._history.append(self._current.copy())
        if self.step is not None and self.log is not None:
            self.log(self.step, {name: self._current[i].tolist() for i, name in enumerate(FIELDS)})
        self._current[:] = 0

    def close(self) -> None:
        """Close the step in progress (into the history and ``log``), e.g. at the end of a
        run; recording goes on with the next ``begin_step``."""
        self._close_step()
        self.step = None

    def _require_step(self) -> None:
        if self.step is None:
            raise ValueError("ledger: call begin_step(step) before recording")

    def _check_rank(self, rank: int) -> None:
        if not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"ledger: rank must be in [0, {self.world_size}), got {rank!r}")

    def _add(self, field: str, rank: int, value: int) -> None:
        self._current[_IDX[field], rank] += value
        self._total[_IDX[field], rank] += value

    def message(self, rank: int, direction: str, *, bits: int, nbytes: int) -> None:
        """Rank ``rank`` sent (``"up"``) or received (``"down"``) a message of ``bits``
        algorithmic bits packed in ``nbytes`` payload bytes."""
        self._require_step()
        self._check_rank(rank)
        if direction not in DIRECTIONS:
            raise ValueError(f"ledger: direction must be one of {DIRECTIONS}, got {direction!r}")
        if not 0 <= nbytes - -(-bits // 8) < self.align:
            raise ValueError(
                f"ledger: a message of {bits} bits cannot take {nbytes} bytes (padding must be "
                f"in [0, {self.align}) bytes)"
            )
        self._add(f"bits_{direction}", rank, bits)
        self._add(f"bytes_{direction}", rank, nbytes)
        self._add(f"messages_{direction}", rank, 1)

    def server_downlink(self, rank: int, bits: int) -> None:
        """The papers' count of the server's message to rank ``rank`` in a topology that
        sends none (all-gather: every rank aggregates itself); nothing travelled."""
        self._require_step()
        self._check_rank(rank)
        if not isinstance(bits, int) or bits < 0:
            raise ValueError(f"ledger: bits must be a non-negative int, got {bits!r}")
        self._add("bits_down_server", rank, bits)

    def collective(self, op: str, rank: int, *, handed: int, received: int = 0) -> None:
        """Rank ``rank`` handed ``handed`` bytes to collective ``op`` (and got ``received``)."""
        self._require_step()
        self._check_rank(rank)
        direction = OP_DIRECTION.get(op)
        if direction is None:
            raise ValueError(f"ledger: unknown collective {op!r}; known: {list(OP_DIRECTION)}")
        self._add(f"handed_{direction}", rank, handed)
        self._add("received", rank, received)

    # -- reading --------------------------------------------------------------------------
    def totals(self) -> dict[str, np.ndarray]:
        """Cumulative counters, each an int64 array over ranks."""
        return {name: self._total[i].copy() for i, name in enumerate(FIELDS)}

    def current(self) -> dict[str, np.ndarray]:
        """Counters of the step in progress."""
        return {name: self._current[i].copy() for i, name in enumerate(FIELDS)}

    def history(self) -> tuple[list[int], dict[str, np.ndarray]]:
        """``(steps, {field: int64 array [len(steps), world_size]})`` over closed and current
        steps (needs ``keep_history``)."""
        if not self.keep_history:
            raise ValueError("ledger: history was not kept (keep_history=False)")
        rows = self._history + ([self._current] if self.step is not None else [])
        steps = self._steps + ([self.step] if self.step is not None else [])
        stacked = np.stack(rows) if rows else np.zeros((0, len(FIELDS), self.world_size),
                                                        dtype=np.int64)
        return steps, {name: stacked[:, i, :] for i, name in enumerate(FIELDS)}

    def check(self) -> None:
        """Raise :class:`LedgerMismatch` unless every step's message bytes equal the bytes
        handed to the collectives, per rank and direction."""
        if self.keep_history:
            steps, h = self.history()
            per_step = [(s, {k: v[j] for k, v in h.items()}) for j, s in enumerate(steps)]
        else:
            per_step = [(self.step, self.current())]
        per_step.append(("total", self.totals()))
        for step, row in per_step:
            for direction in DIRECTIONS:
                sent, handed = row[f"bytes_{direction}"], row[f"handed_{direction}"]
                if not np.array_equal(sent, handed):
                    bad = [int(r) for r in np.flatnonzero(sent != handed)]
                    raise LedgerMismatch(
                        f"ledger, step {step}, {direction}link: ranks {bad} sent messages of "
                        f"{sent[bad].tolist()} payload bytes but handed "
                        f"{handed[bad].tolist()} bytes to the collectives"
                    )

    # -- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Totals and the step in progress (int64 tensors ``[fields, world_size]``, plain
        values); the history is not in it (see the module docstring)."""
        return {"world_size": self.world_size, "align": self.align, "step": self.step,
                "fields": list(FIELDS), "total": torch.from_numpy(self._total.copy()),
                "current": torch.from_numpy(self._current.copy())}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["world_size"] != self.world_size:
            raise ValueError(f"ledger: checkpoint is for {sd['world_size']} ranks, this ledger "
                             f"has {self.world_size}")
        total, current = self._table(sd, "total"), self._table(sd, "current")
        self.align, self.step = int(sd["align"]), sd["step"]
        self._total, self._current = total, current
        self._steps, self._history = [], []

    def _table(self, sd: dict[str, Any], key: str) -> np.ndarray:
        """``sd[key]`` laid out in this version's FIELDS (fields it lacks are zero)."""
        saved = list(sd.get("fields", FIELDS[:9]))
        rows = np.asarray(torch.as_tensor(sd[key]).cpu().numpy(), dtype=np.int64)
        if rows.shape != (len(saved), self.world_size):
            raise ValueError(f"ledger: checkpoint {key!r} has shape {list(rows.shape)}, "
                             f"expected {[len(saved), self.world_size]}")
        out = np.zeros((len(FIELDS), self.world_size), dtype=np.int64)
        for i, name in enumerate(saved):
            if name not in _IDX:
                raise ValueError(f"ledger: checkpoint has unknown field {name!r}")
            out[_IDX[name]] = rows[i]
        return out


def record_round(ledger: Ledger | None, step: int, ranks: Iterable[int], *,
                 up: Iterable[tuple[int, int]] = (), down: Iterable[tuple[int, int]] = (),
                 server_down_bits: int = 0) -> None:
    """A driver's ledger rows for ``step`` (no-op without a ledger): each rank in ``ranks``
    sent the uplink messages ``up`` and received the downlink messages ``down``, each a
    ``(bits, payload bytes)`` pair, and would have received ``server_down_bits`` from a
    server it did not use (:meth:`Ledger.server_downlink`)."""
    if ledger is None:
        return
    ledger.begin_step(step)
    up, down = list(up), list(down)
    for rank in ranks:
        for bits, nbytes in up:
            ledger.message(rank, "up", bits=bits, nbytes=nbytes)
        for bits, nbytes in down:
            ledger.message(rank, "down", bits=bits, nbytes=nbytes)
        if server_down_bits:
            ledger.server_downlink(rank, server_down_bits)


class JsonLinesLog:
    """A :class:`Ledger` ``log`` appending ``{"step": k, field: [per rank]}`` lines to
    ``path`` (the run log: the history a checkpoint leaves out)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, step: int, row: dict[str, list[int]]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **row}) + "\n")
