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
  filled, the others to be filled). ``received`` bytes are kept for information.

:meth:`Ledger.check` asserts, for every step and rank, that the payload bytes of the messages
equal the bytes handed to the collectives of that direction, exactly; :meth:`Ledger.message`
checks ``0 <= nbytes - ceil(bits / 8) < align`` for every message as it is recorded.
Counts are Python ints held in int64 arrays (no overflow below 2**63 bits).
"""

from __future__ import annotations

from typing import Any

import numpy as np

DIRECTIONS = ("up", "down")
OP_DIRECTION = {"all_gather": "up", "gather": "up", "broadcast": "down"}
#: counters kept per rank, in this order
FIELDS = ("bits_up", "bits_down", "bytes_up", "bytes_down", "handed_up", "handed_down",
          "received", "messages_up", "messages_down")
_IDX = {name: i for i, name in enumerate(FIELDS)}


class LedgerMismatch(AssertionError):
    """The algorithmic payload bytes and the bytes handed to the collectives differ."""


class Ledger:
    """Per-step and cumulative counters for ``world_size`` ranks.

    A process that hosts one rank of a process group records only that rank's column; the
    in-process transport records all of them. ``keep_history=False`` keeps the totals and
    the current step only (long DDP runs).
    """

    def __init__(self, world_size: int, *, align: int = 8, keep_history: bool = True):
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"ledger: world_size must be a positive int, got {world_size!r}")
        self.world_size = world_size
        self.align = int(align)
        self.keep_history = bool(keep_history)
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
        self._current[:] = 0

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
        return {"world_size": self.world_size, "align": self.align, "step": self.step,
                "total": self._total.copy(), "current": self._current.copy(),
                "steps": list(self._steps), "history": [h.copy() for h in self._history]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd["world_size"] != self.world_size:
            raise ValueError(f"ledger: checkpoint is for {sd['world_size']} ranks, this ledger "
                             f"has {self.world_size}")
        self.align, self.step = sd["align"], sd["step"]
        self._total, self._current = sd["total"].copy(), sd["current"].copy()
        self._steps, self._history = list(sd["steps"]), [h.copy() for h in sd["history"]]
