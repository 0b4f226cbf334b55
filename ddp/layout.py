"""Compression units: the parameters compressed together, and their algorithm state.

DDP hands the hook one flat gradient bucket at a time, identified by ``bucket.index()``;
after the first iteration it rebuilds its buckets in gradient-ready order, so indices and
contents change underneath any state keyed by index. Here state is keyed by *parameters*:

- a :class:`Unit` is an ordered tuple of parameter indices compressed as one flat vector,
  with its algorithm state (``alg.init_state(numel, ...)``) and a stable seed ``stream``
  (its smallest parameter index);
- a bucket whose parameters are exactly one unit is the fast path (views, no copy);
- a bucket made of several whole units (the first iteration after loading a checkpoint:
  DDP's initial single bucket holding the saved, rebuilt units) runs each unit on its
  slices of the bucket, so a resumed run compresses exactly as the uninterrupted one;
- any other bucket (DDP's rebuild) becomes a new unit whose per-element state is cut out
  of the units holding its parameters, parameter by parameter; what those units keep
  becomes a smaller unit. The state moves exactly: nothing is reset or lost.

Per-element state entries are tensors of shape ``[numel]``; the int ``"numel"`` is the
unit's size; any other entry (``world_size``, ``rank``, scalars) must agree among the units
merged into one, else :class:`LayoutError` names it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

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
    """Where one unit's parameters lie in a bucket: ``(bucket offset, numel)`` runs."""

    unit: Unit
    runs: list[tuple[int, int]]

    @property
    def contiguous(self) -> bool:
        return len(self.runs) == 1


def _runs(offsets: Sequence[int], numels: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for off, n in zip(offsets, numels, strict=True):
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1][1] += n
        else:
            runs.append([off, n])
    return [(a, b) for a, b in runs]


class UnitTable:
    """All units of one model; every parameter index belongs to at most one unit."""

    def __init__(self, init_state: Callable[[int, torch.device], dict]):
        self.init_state = init_state
        self.units: list[Unit] = []
        self.rebuilds = 0  # layouts remapped (for stats and tests)

    def owner(self) -> dict[int, Unit]:
        return {p: u for u in self.units for p in u.params}

    def plan(self, params: Sequence[int], numels: Sequence[int], device) -> list[Piece]:
        """Units covering a bucket with these parameters (in bucket order), remapping
        state first when the bucket is not made of whole units."""
        params, numels = tuple(params), tuple(numels)
        bucket_off = dict(zip(params, _offsets(numels), strict=True))
        owner = self.owner()
        holders = {id(owner[p]): owner[p] for p in params if p in owner}
        whole = len(holders) > 0 and all(p in owner for p in params) and sum(
            len(u.params) for u in holders.values()) == len(params)
        if whole and len(holders) == 1 and next(iter(holders.values())).params != params:
            whole = False  # one unit in another order: reorder it once, then the fast path
        if whole:
            units = sorted(holders.values(), key=lambda u: bucket_off[u.params[0]])
            return [Piece(u, _runs([bucket_off[p] for p in u.params], u.numels)) for u in units]
        unit = self._carve(params, numels, owner, device)
        return [Piece(unit, [(0, unit.numel)])]

    def _carve(self, params, numels, owner, device) -> Unit:
        """New unit for ``params``; its state is cut per parameter out of the holders."""
        fresh = [(p, n) for p, n in zip(params, numels, strict=True) if p not in owner]
        fresh_state = self.init_state(sum(n for _, n in fresh), device) if fresh else None
        fresh_off = dict(zip([p for p, _ in fresh], _offsets([n for _, n in fresh]), strict=True))
        holders = [u for u in self.units if any(p in set(params) for p in u.params)]
        sources = holders + ([Unit(tuple(p for p, _ in fresh), tuple(n for _, n in fresh),
                                   fresh_state)] if fresh else [])
        new = Unit(params, numels, {})
        for key in sources[0].state:
            probe = sources[0]
            if key == "numel":
                new.state[key] = new.numel
            elif probe.is_elementwise(probe.state[key]):
                new.state[key] = torch.cat([
                    _slice(owner.get(p), p, key) if p in owner
                    else fresh_state[key][fresh_off[p]:fresh_off[p] + n]
                    for p, n in zip(params, numels, strict=True)
                ]).to(device)
            else:
                new.state[key] = _agreed(key, sources)
        for src in sources:
            if set(src.state) != set(new.state):
                raise LayoutError(
                    f"cannot merge algorithm state with keys {sorted(src.state)} and "
                    f"{sorted(new.state)} into one unit"
                )
        kept = [self._leftover(u, set(params)) for u in holders]
        self.units = [u for u in self.units if all(u is not h for h in holders)]
        self.units += [u for u in kept if u is not None] + [new]
        self.rebuilds += 1
        return new

    @staticmethod
    def _leftover(unit: Unit, taken: set[int]) -> Unit | None:
        keep = [(p, n) for p, n in zip(unit.params, unit.numels, strict=True) if p not in taken]
        if not keep:
            return None
        offs = dict(zip(unit.params, unit.offsets(), strict=True))
        state = {}
        for key, value in unit.state.items():
            if key == "numel":
                state[key] = sum(n for _, n in keep)
            elif unit.is_elementwise(value):
                state[key] = torch.cat([value[offs[p]:offs[p] + n] for p, n in keep])
            else:
                state[key] = value
        return Unit(tuple(p for p, _ in keep), tuple(n for _, n in keep), state)


def _offsets(numels: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for n in numels:
        out.append(acc)
        acc += n
    return out


def _slice(unit: Unit, p: int, key: str) -> torch.Tensor:
    i = unit.params.index(p)
    off = unit.offsets()[i]
    return unit.state[key][off:off + unit.numels[i]]


def _agreed(key: str, sources: list[Unit]):
    first = sources[0].state[key]
    for src in sources[1:]:
        other = src.state[key]
        same = (torch.equal(first, other) if isinstance(first, torch.Tensor)
                and isinstance(other, torch.Tensor) else first == other)
        if not same:
            raise LayoutError(
                f"DDP bucket rebuild merges parameters whose non-elementwise algorithm state "
                f"{key!r} differs ({first!r} vs {other!r}); cannot remap it exactly"
            )
    return first.clone() if isinstance(first, torch.Tensor) else first
