"""Argument checks of the compressor layer: everything a call validates before its first write.

Every function here raises ``ValueError`` (never ``TypeError``, ``AttributeError`` or a
``RuntimeError`` from deep inside torch) naming the argument and what is wrong with it, and
none of them writes to a tensor. :mod:`.base` calls them in the order of the contract:
arguments, then buffers, then the finite and payload checks, then the kernels.
"""

from __future__ import annotations

import math
import numbers
import struct

import torch

from gradpack.kernels.philox import check_seed

from . import faults

#: the largest finite float32
FP32_MAX = struct.unpack("f", struct.pack("I", 0x7F7FFFFF))[0]


def integer(value, what: str, spec: str) -> int:
    """``value`` as a Python int: ints and integral numpy scalars, not bools or floats."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{spec}: {what} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def seed(value, spec: str, what: str = "seed") -> int:
    """A Philox seed: an int in ``[0, 2**63)``."""
    return check_seed(integer(value, what, spec))


def seed_list(seeds, n: int, spec: str) -> list[int]:
    """``n`` seeds (one per payload row); ``None`` means all zero."""
    if seeds is None:
        return [0] * n
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"{spec}: seeds must be a sequence of ints, got "
                         f"{type(seeds).__name__}")
    seeds = [seed(s, spec, "each of seeds") for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"{spec}: {n} payloads but {len(seeds)} seeds")
    return seeds


def fp32_scalar(value, what: str, spec: str) -> float:
    """A real number that stays finite, and nonzero unless it is zero, in float32."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{spec}: {what} must be a real number, got "
                         f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > FP32_MAX:
        raise ValueError(f"{spec}: {what} must be finite in float32, got {value!r}")
    if value != 0.0 and struct.unpack("f", struct.pack("f", value))[0] == 0.0:
        raise ValueError(f"{spec}: {what} = {value!r} is 0 in float32")
    return value


def tensor(t, what: str, spec: str) -> torch.Tensor:
    """A dense (strided) torch tensor with data: not sparse, not on the meta device."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{spec}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{spec}: {what} must be a dense tensor, got layout {t.layout}")
    if t.device.type == "meta":
        raise ValueError(f"{spec}: {what} is on the meta device (it has no data)")
    return t


def writable(t: torch.Tensor, what: str, spec: str) -> torch.Tensor:
    """A tensor that is written in place: not an inference tensor outside inference mode
    (torch would refuse the write half-way through a step)."""
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(f"{spec}: {what} is an inference tensor; it cannot be written "
                         "outside torch.inference_mode()")
    return t


def aligned(t: torch.Tensor, align: int) -> bool:
    """The first byte of ``t`` is a multiple of ``align`` bytes into memory."""
    return t.data_ptr() % align == 0


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` a contiguous tensor occupies."""
    lo = t.data_ptr()
    return lo, lo + t.numel() * t.element_size()


def overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` (contiguous) share memory."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def first_bad(values: torch.Tensor, nonnegative: bool) -> tuple[int, int, float] | None:
    """``(row, column, value)`` of the first entry of ``values`` ([n, m], float) that is not
    finite (or is negative, with ``nonnegative``), or ``None``.

    One reduction pass (``aminmax``: nan propagates into both, +-inf shows in them) and one
    host read of its flag; the position is searched for only when something is wrong.
    Inside :meth:`.faults.Faults.deferred` the flag is recorded instead and ``None``
    returned."""
    if values.numel() == 0:
        return None
    lo, hi = torch.aminmax(values)
    ok = ((lo >= 0) if nonnegative else torch.isfinite(lo)) & torch.isfinite(hi)
    deferred = faults.current()
    if deferred is not None:  # recorded, not read: the caller reports it (compressors.faults)
        deferred.flag(~ok, lambda: ValueError("a payload field is not finite"))
        return None
    if bool(ok):  # the one host read (a device sync on a GPU)
        return None
    v = values.float()
    bad = ~torch.isfinite(v)
    if nonnegative:
        bad |= v < 0
    row, col = (int(i) for i in torch.nonzero(bad)[0])
    return row, col, float(v[row, col])
