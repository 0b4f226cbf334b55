"""Deferred checks: the finite and payload checks as device flags, read once.

By default a compressor call checks its input (finite) and, when decoding, its payloads
(headers and values) with one host read each, and raises before it writes anything. On a
GPU each host read stalls the stream, so a caller that runs many calls per training step
(the DDP hook, one per bucket) collects the checks instead::

    faults = Faults()
    with faults.deferred():                 # this thread's compressor calls record, not read
        payload = c.step(fusion, grad, state, seed=s)
        c.decode_sum(rows, d, seeds=seeds, out=out)
    faults.raise_first()                    # one host read for all of them

Inside ``deferred()`` a check that fails does not stop the call: state and ``out`` are
written (with unspecified values, never outside ``out``), so the caller must be able to roll
back what it wrote (the DDP hook snapshots the state it steps). :meth:`Faults.raise_first`
then raises the error the immediate check would have raised (same type, same message),
building the message with host reads only on that failure path.

The context is per thread (the DDP hook's body and its all-gather callbacks run on different
threads), and nothing here synchronises with the device except :meth:`Faults.raise_first`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager

import torch

_local = threading.local()


def current() -> Faults | None:
    """The :class:`Faults` collecting this thread's checks, or ``None`` (check at once)."""
    return getattr(_local, "faults", None)


@contextmanager
def _collecting(faults: Faults | None):
    saved = current()
    _local.faults = faults
    try:
        yield faults
    finally:
        _local.faults = saved


class Faults:
    """Device-side check flags, each with the error it stands for."""

    def __init__(self):
        self._flags: list[torch.Tensor] = []
        self._errors: list[Callable[[], Exception]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._flags)

    def deferred(self):
        """Context: this thread's compressor checks record here instead of reading."""
        return _collecting(self)

    def flag(self, bad: torch.Tensor, error: Callable[[], Exception]) -> None:
        """Record ``bad`` (a one-element bool tensor, on any device; not read here) and the
        ``error()`` to raise if it is set (called outside any deferred context, so it may
        run the immediate checks to say what is wrong)."""
        with self._lock:
            self._flags.append(bad.reshape(()).to(torch.bool))
            self._errors.append(error)

    def any(self) -> torch.Tensor | None:
        """One bool tensor: some flag is set (device-side, nothing read); ``None`` if empty."""
        with self._lock:
            flags = list(self._flags)
        return torch.stack(flags).any() if flags else None

    def raise_first(self) -> None:
        """Read every flag at once (the one host read) and raise the error of the first one
        set, in recording order; clears the record either way."""
        with self._lock:
            flags, errors = self._flags, self._errors
            self._flags, self._errors = [], []
        if not flags:
            return
        # the one host read of the step (a device synchronisation on a GPU)
        which = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
        for bad, error in zip(which, errors, strict=True):
            if bad:
                with _collecting(None):
                    raise error()

    def extend(self, other: Faults) -> None:
        """Append ``other``'s record (after this one's), e.g. to read several at once."""
        with other._lock:
            flags, errors = list(other._flags), list(other._errors)
        with self._lock:
            self._flags += flags
            self._errors += errors

    def clear(self) -> None:
        with self._lock:
            self._flags, self._errors = [], []
