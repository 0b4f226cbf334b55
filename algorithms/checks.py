"""Checks of the algorithm layer: hyperparameters once, at construction; the per-call scalars
(``lr``, mixing weights); and the finite check that lets a step commit its state last.

Every check raises ``ValueError`` naming the algorithm, the argument and the value it got
(never ``TypeError`` from a comparison deep inside: ``gamma='abc'`` is "must be a real
number", not "'>' not supported"). A range is written as an interval, ``"(0, 1]"``,
``"[0, inf)"``, and the message quotes it.

A real hyperparameter is a real number (``numbers.Real``: not a bool, not a string, not a
tensor), finite, inside its interval, and still finite and nonzero once rounded to float32,
the type every kernel receives its scalars in (:func:`gradpack.kernels.fusion.fp32`): a
``gamma = 1e-300`` would silently be 0 there. An integer hyperparameter (``local_steps``,
``seed``) is an int (``numbers.Integral``, not a bool).

:func:`require_finite` is the one finite check of a produced state: one ``aminmax`` reduction
per tensor (nan propagates into both, +-inf shows in them; far cheaper than
``isfinite(x).all()``) and one host read for all of them together, or, inside
:meth:`gradpack.compressors.faults.Faults.deferred` (the DDP hook), a recorded device flag
and no read at all: the caller then snapshots and restores the state, as that module says.
"""

from __future__ import annotations

import functools
import math
import numbers
import struct
from collections.abc import Callable

import torch

from gradpack.compressors import faults
from gradpack.compressors.checks import FP32_MAX


@functools.lru_cache(maxsize=64)
def _interval(spec: str) -> tuple[float, float, bool, bool]:
    """``"(0, 1]"`` -> ``(0.0, 1.0, False, True)``: bounds and whether each is included."""
    lo, hi = (s.strip() for s in spec[1:-1].split(","))
    return float(lo), float(hi), spec[0] == "[", spec[-1] == "]"


def _inside(value: float, spec: str) -> bool:
    lo, hi, lo_in, hi_in = _interval(spec)
    return (lo <= value if lo_in else lo < value) and (value <= hi if hi_in else value < hi)


def _fp32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def real(alg: str, name: str, value, interval: str) -> float:
    """``value`` as a float, checked as the module docstring says; ``alg`` names the caller."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{alg}: {name} must be a real number in {interval}, got "
                         f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or not _inside(value, interval):
        raise ValueError(f"{alg}: {name} must be a finite real number in {interval}, got "
                         f"{value!r}")
    return fp32_scalar(alg, name, value)


def fp32_scalar(alg: str, name: str, value: float) -> float:
    """``value`` (a finite float, possibly derived: ``1 / gamma``) if float32 keeps it finite,
    and nonzero when it is nonzero."""
    if abs(value) > FP32_MAX:
        raise ValueError(f"{alg}: {name} = {value!r} overflows float32 (largest {FP32_MAX:.4g})")
    if value != 0.0 and _fp32(value) == 0.0:
        raise ValueError(f"{alg}: {name} = {value!r} is 0 in float32 (the kernels' scalar type)")
    return value


def integer(alg: str, name: str, value, interval: str) -> int:
    """``value`` as an int: an integral number (not a bool, not a float) in ``interval``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{alg}: {name} must be an int in {interval}, got "
                         f"{type(value).__name__} {value!r}")
    value = int(value)
    if not _inside(value, interval):
        raise ValueError(f"{alg}: {name} must be an int in {interval}, got {value}")
    return value


def nonfinite(*tensors: torch.Tensor) -> torch.Tensor | None:
    """Device flag: some tensor holds inf or nan (one ``aminmax`` pass each, nothing read);
    ``None`` when they are all empty."""
    bounds = [b for t in tensors if t.numel() for b in torch.aminmax(t)]
    if not bounds:
        return None
    return ~torch.isfinite(torch.stack(bounds)).all()


def all_finite(*tensors: torch.Tensor) -> bool:
    """No inf or nan in any of ``tensors``: one ``aminmax`` pass each, one host read."""
    flag = nonfinite(*tensors)
    # the one host read (a device synchronisation on a GPU): the step must know before it
    # commits; callers skip it when the compressor's check_finite is off
    return flag is None or not bool(flag)


def deferred() -> faults.Faults | None:
    """The caller's deferred checks (:mod:`gradpack.compressors.faults`), or ``None``."""
    return faults.current()


def require_finite(error: Callable[[], Exception], *tensors: torch.Tensor) -> None:
    """Raise ``error()`` unless every one of ``tensors`` is finite; inside deferred checks,
    record the flag with ``error`` instead (no host read, nothing raised here)."""
    collect = faults.current()
    if collect is None:
        if not all_finite(*tensors):
            raise error()
        return
    flag = nonfinite(*tensors)
    if flag is not None:
        collect.flag(flag, error)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` a (non-negatively strided) tensor can touch."""
    lo = t.data_ptr()
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    return lo, lo + (last + 1) * t.element_size()


def overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` may share memory (writing one could change the other)."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


@functools.lru_cache(maxsize=64)
def momentum_bounded(keep: float, take: float) -> bool:
    """Whether ``v <- keep * v + take * g`` (fp32, one rounding per operation) stays finite for
    all finite ``v`` and ``g``. Rounding is monotonic, so the worst case is
    ``v = g = FP32_MAX``; with ``keep + take`` rounded to just above 1 that could overflow.
    (No ``eta`` in (0, 1] found by search does; this makes it a proof, not a hope.)"""
    big = torch.tensor(FP32_MAX, dtype=torch.float32)
    k, t = (torch.tensor(c, dtype=torch.float32) for c in (keep, take))
    return bool(torch.isfinite(big * k + big * t))


__all__ = ["FP32_MAX", "all_finite", "deferred", "fp32_scalar", "integer", "momentum_bounded",
           "nonfinite", "overlap", "real", "require_finite"]
