"""One DDP step as a transaction: every bucket's checks read once, at the end, and every state
tensor the step wrote restored if they fail.

The hook (:mod:`.hook`) steps the algorithm bucket by bucket while backward runs, and the
all-gather callbacks aggregate as the buckets arrive. None of them reads the device: each
records its checks as flags (:class:`gradpack.compressors.faults.Faults`) and each bucket's
future, the one DDP waits for, is held back. When the last callback of the step has run,
:meth:`Round.close` reads every flag at once (the step's one host read) and then either

- completes every bucket's future with its direction (the step commits), or
- restores every state tensor the step wrote (worker and server side, on every rank: each
  rank reads the same gathered flags) and the step counter, and fails every future with the
  first error in bucket order (so ``loss.backward()`` raises it on every rank, before the
  optimizer steps), or, under policy ``"skip"`` for non-finite gradients, completes them
  with zeros.

Snapshots are copies into buffers kept per unit (one copy of the state per step): the price
of "a failed step leaves every rank's state as it was". ``transactional=False`` (at
:func:`gradpack.ddp.register`) skips them: a failed step then still fails on every rank
before the optimizer steps, but leaves the state to be reloaded from a checkpoint.
"""

import threading
import warnings

import torch

from gradpack.compressors.faults import Faults
from gradpack.errors import NonFiniteGradientError


def _future(device: torch.device) -> torch.futures.Future:
    if device.type == "cuda":
        return torch.futures.Future(devices=[device])
    return torch.futures.Future()


def _unwrap(gate: torch.futures.Future) -> torch.Tensor:
    value = gate.value()
    if isinstance(value, BaseException):
        raise value
    return value


class Round:
    """The buckets of step ``step``: their futures, checks and the state snapshots."""

    def __init__(self, step: int, spares: dict, transactional: bool = True):
        self.step = step
        self.transactional = transactional
        self.spares = spares  # id(unit) -> (unit, {key: buffer}); kept across steps
        self.buckets: list[tuple[torch.futures.Future, torch.Tensor]] = []
        self.faults: list[Faults] = []  # one per all-gather
        self.arrived: dict = {}  # units waiting for more of their parameters (layout.collect)
        self.saved: list[tuple[dict, dict]] = []  # (unit state, {key: copy or value})
        self.skips: list = []  # (where, rows) of each bucket, for the "skip" report
        self.issued = 0
        self.done = 0
        self.closed = False  # the step's last bucket has been issued
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def snapshot(self, unit) -> None:
        """Copy ``unit``'s state into its spare buffers (allocated once per unit); nothing
        when the state is not ``transactional``."""
        if not self.transactional:
            return
        entry = self.spares.get(id(unit))
        if entry is None or entry[0] is not unit:
            entry = (unit, {})
            self.spares[id(unit)] = entry
        spare, saved = entry[1], {}
        for key, value in unit.state.items():
            if isinstance(value, torch.Tensor):
                buf = spare.get(key)
                if buf is None or buf.shape != value.shape or buf.dtype != value.dtype \
                        or buf.device != value.device:
                    buf = spare[key] = torch.empty_like(value)
                saved[key] = buf.copy_(value)
            else:
                saved[key] = value
        self.saved.append((unit.state, saved))

    def restore(self) -> None:
        for state, saved in self.saved:
            for key, value in saved.items():
                if isinstance(value, torch.Tensor):
                    state[key].copy_(value)
                else:
                    state[key] = value

    def add_bucket(self, buf: torch.Tensor) -> torch.futures.Future:
        """The future DDP waits for: it follows a gate that :meth:`close` opens with the
        bucket's direction or with the step's error (raised from a callback, as DDP
        expects)."""
        gate = _future(buf.device)
        with self.lock:
            self.buckets.append((gate, buf))
        return gate.then(_unwrap)

    def add_collective(self) -> Faults:
        """The faults of one all-gather (read in the order the all-gathers were issued)."""
        faults = Faults()
        with self.lock:
            self.faults.append(faults)
            self.issued += 1
        return faults

    def finished(self, error: BaseException | None = None) -> bool:
        """One all-gather's callback is done; ``True`` for the one that closes the step."""
        with self.lock:
            self.done += 1
            if error is not None and self.error is None:
                self.error = error
            return self.closed and self.done == self.issued

    def last_issued(self) -> bool:
        """The step's last bucket is issued; ``True`` if every all-gather's callback has
        already run (then the caller closes the step)."""
        with self.lock:
            self.closed = True
            return self.done == self.issued

    def abandon(self, error: BaseException) -> bool:
        """The hook body failed: no more buckets come this step, which fails with ``error``;
        ``True`` if no all-gather is outstanding (then the caller closes the step)."""
        with self.lock:
            if self.error is None:
                self.error = error
            self.closed = True
            return self.done == self.issued

    def close(self, state) -> None:
        """The step's one host read, then commit, undo and fail, or undo and skip."""
        checks = Faults()
        for faults in self.faults:
            checks.extend(faults)
        try:
            if self.error is not None:
                raise self.error
            checks.raise_first()
        except NonFiniteGradientError as err:
            state.last_error = err
            self._undo(state)
            if state.nonfinite == "skip":
                self._skip(state, err)
                return
            self._fail(err)
            return
        except BaseException as err:  # noqa: BLE001 - handed to every bucket's future
            state.last_error = err
            self._undo(state)
            self._fail(err)
            return
        state.last_error = None
        for gate, buf in self.buckets:
            gate.set_result(buf)

    def _undo(self, state) -> None:
        if not self.transactional:
            state.failed = (f"step {self.step} failed with transactional=False, so its state "
                            "was not restored")
            return
        self.restore()
        state.step = self.step

    def _fail(self, err: BaseException) -> None:
        for gate, _ in self.buckets:
            gate.set_result(err)

    def _skip(self, state, err: NonFiniteGradientError) -> None:
        for where, ranks in self.skips:
            bad = ranks()
            if bad:
                with state._lock:
                    state.stats.add_skipped((self.step, where, bad))
        warnings.warn(f"gradpack.ddp (rank {state.rank}): {err.what}; step skipped (zero "
                      "direction, every rank's state unchanged)", RuntimeWarning, stacklevel=1)
        state.step = self.step + 1  # the step is taken, with a zero direction
        for gate, buf in self.buckets:
            gate.set_result(buf.zero_())
