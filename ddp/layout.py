"""Compression units: the parameters compressed together, and their algorithm state.

DDP hands the hook one flat gradient bucket at a time; its first iteration has one bucket of
every parameter (its default), after which it rebuilds its buckets in gradient-ready order.
State is keyed by *parameter position* (the order of the first iteration's buckets), not by
bucket, and the units are fixed when the state binds:

- a :class:`Unit` is an ordered tuple of parameter positions compressed as one flat vector,
  with its algorithm state (``alg.init_state(numel, ...)``) and a stable seed ``stream``
  (its smallest position);
- :meth:`UnitTable.bind` cuts the parameters into units with DDP's own bucket assignment over
  them in reverse order, under DDP's bucket caps: the buckets DDP's rebuild makes when
  gradients become ready in reverse order, so from then on a bucket is usually exactly its
  units (the fast path: views, no copy);
- :meth:`UnitTable.collect` serves every other bucket: a unit is stepped, and sent, in the
  bucket that completes it, from its parameters' slices of the buckets seen so far this
  step (their futures are held until the step closes, :mod:`.round`).

Because the units never depend on which buckets DDP forms, a run resumed from a checkpoint
taken after any step (the first included: before DDP's rebuild) compresses exactly what the
uninterrupted run compresses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from gradpack.errors import LayoutError


@dataclass
class Unit:
    params: tuple[int, ...]  # parameter indices, in flat order
    numels: tuple[int, ...]
    state: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def stream(self) -> int:
        return min(self.params)

    def offsets(self) -> list[int]:
        return _offsets(self.numels)

    def is_elementwise(self, value) -> bool:
        return isinstance(value, torch.Tensor) and tuple(value.shape) == (self.numel,)


@dataclass
class Piece:
    """A unit whose parameters have all arrived this step: where they lie, in unit order, as
    ``(bucket buffer, offset, numel)`` runs (adjacent parameters of one buffer merged)."""

    unit: Unit
    runs: list[tuple[torch.Tensor, int, int]]

    @property
    def contiguous(self) -> bool:
        return len(self.runs) == 1

    def grad(self) -> torch.Tensor:
        """The unit's flat gradient: a view of one bucket, or the runs concatenated."""
        if self.contiguous:
            buf, a, n = self.runs[0]
            return buf[a:a + n]
        return torch.cat([buf[a:a + n] for buf, a, n in self.runs])

    def view(self) -> torch.Tensor | None:
        """The bucket slice the direction can be written to directly (one float32 run)."""
        if self.contiguous and self.runs[0][0].dtype == torch.float32:
            buf, a, n = self.runs[0]
            return buf[a:a + n]
        return None

    def scatter(self, direction: torch.Tensor) -> None:
        """Write the unit's direction back into its runs (cast to each bucket's dtype)."""
        pos = 0
        for buf, a, n in self.runs:
            buf[a:a + n].copy_(direction[pos:pos + n])
            pos += n


def _runs(spots: Sequence[tuple[torch.Tensor, int, int]]) -> list[tuple[torch.Tensor, int, int]]:
    runs: list[list] = []
    for buf, off, n in spots:
        if runs and runs[-1][0] is buf and runs[-1][1] + runs[-1][2] == off:
            runs[-1][2] += n
        else:
            runs.append([buf, off, n])
    return [(b, a, n) for b, a, n in runs]


def assign(tensors: Sequence[torch.Tensor], limits: Sequence[int]) -> list[list[int]]:
    """DDP's own bucket assignment of ``tensors`` (in the order given) under ``limits``
    (bytes: the first bucket's, then every later one's)."""
    groups, _ = dist._compute_bucket_assignment_by_size(list(tensors), list(limits))
    return [list(g) for g in groups]


class UnitTable:
    """All units of one model; every parameter position belongs to exactly one unit once
    bound, and the units never change afterwards."""

    def __init__(self, init_state: Callable[[int, torch.device], dict]):
        self.init_state = init_state
        self.units: list[Unit] = []

    def owner(self) -> dict[int, Unit]:
        return {p: u for u in self.units for p in u.params}

    def bind(self, params: Sequence[int], tensors: Sequence[torch.Tensor], device,
             limits: Sequence[int]) -> None:
        """Units (fresh state) for the parameters no unit holds: DDP's bucket assignment of
        them in reverse order, which is the layout DDP's rebuild makes when gradients become
        ready in reverse order (the usual case); any other rebuilt layout is served by
        collecting units across buckets (:meth:`collect`), with the same results."""
        owner = self.owner()
        fresh = [(p, t) for p, t in zip(params, tensors, strict=True) if p not in owner][::-1]
        if not fresh:
            return
        for group in assign([t for _, t in fresh], limits):
            ps = tuple(fresh[i][0] for i in group)
            numels = tuple(fresh[i][1].numel() for i in group)
            self.units.append(Unit(ps, numels, self.init_state(sum(numels), device)))

    def collect(self, arrived: dict, params: Sequence[int], numels: Sequence[int],
                buf: torch.Tensor) -> list[Piece]:
        """Add one bucket (its parameter positions, their numels, its flat buffer) to the
        step's arrivals (``arrived``: ``id(unit) -> {position: (buf, offset, numel)}``) and
        return the units it completes, in the bucket order of their first parameter."""
        owner = self.owner()
        touched: dict[int, Unit] = {}
        for p, off, n in zip(params, _offsets(numels), numels, strict=True):
            unit = owner.get(p)
            if unit is None:
                raise LayoutError(f"parameter position {p} belongs to no compression unit")
            arrived.setdefault(id(unit), {})[p] = (buf, off, n)
            touched.setdefault(id(unit), unit)
        pieces = []
        for key, unit in touched.items():
            got = arrived[key]
            if len(got) == len(unit.params):
                del arrived[key]
                pieces.append(Piece(unit, _runs([got[p] for p in unit.params])))
        return pieces


def _offsets(numels: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for n in numels:
        out.append(acc)
        acc += n
    return out
