"""Random-K sparsification with shared-seed indices: the spec (index stream, plan math) and
the dispatcher. :mod:`.randk_torch` is the torch twin, :mod:`.randk_triton` and
:mod:`.randk_cpu` the kernels.

Index set: the first ``m`` *distinct* values of the Philox stream

    draw_{2q} = floor(u0 * d / 2**64),  draw_{2q+1} = floor(u1 * d / 2**64),
    (c0, c1, c2, c3) = randint4x(seed, q),  u0 = c0 * 2**32 + c1,  u1 = c2 * 2**32 + c3,

in order of first appearance, where ``m = K`` (or ``m = d - K`` and the set is the
complement, when ``K > d / 2``, so the number of draws stays below ``1.4 m``).
The distinct values of an i.i.d. uniform sequence, in order of first appearance, are a
uniformly random ordering of ``[0, d)``, so the set is a uniform ``K``-subset: every
coordinate is in it with probability ``K / d`` (up to the ``2**-33`` non-uniformity
of the 64-bit multiply-shift). The stream is counter-based, so the set does not depend
on how many draws a backend generates, and the receiver regenerates it from the seed:
no index bits travel. Cost ``O(K log K)``: Philox draws, one sort, no permutation of ``d``.

Payload: ``K`` fp32 values in ascending index order, ``r_i * (d / K)`` (unbiased,
``omega = d/K - 1``) or ``r_i`` (biased, ``alpha = K/d``), then zero padding. With a value
code (``values``: the caller's pair of functions, e.g. a QSGD quantizer of the ``K``
values) the payload is that code's instead, and the epilogue uses the values it decodes to.

``r_i * (d / K)`` overflows fp32 for ``|r_i|`` above ``FP32_MAX / (d / K)``: every backend
gathers the ``K`` values into a buffer of their own and hands them to the caller's
``check`` before anything is written, so the caller can refuse them (the compressor's
``RangeError``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import torch

from .dispatch import Table
from .fusion import Fusion
from .sparse import accumulator

IMPLS = Table("randk", torch=".randk_torch", triton=".randk_triton", cpu=".randk_cpu")


def first_distinct(draws: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``m`` distinct values of ``draws`` in order of appearance, returned in
    ascending order, and a device flag: are there ``m`` distinct values at all (if not, the
    tail of the result is unspecified)? Fixed-size device operations only: no host read."""
    vals, perm = torch.sort(draws, stable=True)
    first = torch.ones_like(vals, dtype=torch.bool)
    first[1:] = vals[1:] != vals[:-1]
    # positions in the stream of first appearances
    first_at = torch.zeros_like(first).scatter_(0, perm, first)
    chosen = (first_at & (torch.cumsum(first_at, 0) <= m))[perm]  # in sorted order
    return _compact(chosen, vals, m), first.sum() >= m


def _compact(keep: torch.Tensor, vals: torch.Tensor, m: int) -> torch.Tensor:
    """``vals[keep]`` for a mask known to hold ``m`` entries, without a host read: each
    kept value is scattered to its rank, the others to a discarded slot."""
    slot = torch.where(keep, torch.cumsum(keep, 0) - 1, m)
    return torch.empty(m + 1, dtype=vals.dtype, device=vals.device).scatter_(0, slot, vals)[:m]


def planned_draws(m: int, d: int) -> int:
    """Draws that hold ``m`` distinct values with overwhelming probability: the coupon
    mean ``d ln(d / (d - m))`` plus eight standard deviations (variance ``<= m``)."""
    mean = d * (math.log(d) - math.log(d - m))
    return math.ceil(mean + 8.0 * math.sqrt(m) + 64)


def indices_from_draws(draws: Callable, seed: int, d: int, k: int, device,
                       extend_on_host: bool) -> torch.Tensor:
    """The ``k`` selected coordinates (int64, ascending) for ``seed``, from a backend's
    ``draws(seed, m, d, device)`` (the first ``m`` draws of the stream), with fixed-size
    device operations: no host synchronisation on a GPU. :func:`planned_draws` hold ``m``
    distinct values except with probability far below ``1e-12``; should they not, with
    ``extend_on_host`` (where a host read is free: the torch twin on the CPU) twice as
    many are drawn (the same set: the stream is counter-based), otherwise the run stops
    with a device-side assertion rather than send a wrong set."""
    device = torch.device(device)
    if k == d:
        return torch.arange(d, device=device)
    complement = k > d - k
    m = d - k if complement else k
    n = planned_draws(m, d)
    chosen, enough = first_distinct(draws(seed, n, d, device), m)
    if extend_on_host:
        while not bool(enough):  # free on the CPU
            n *= 2
            chosen, enough = first_distinct(draws(seed, n, d, device), m)
    else:
        torch._assert_async(enough, "Random-K: fewer distinct draws than planned")
    if not complement:
        return chosen
    keep = torch.ones(d, dtype=torch.bool, device=device)
    keep[chosen] = False
    return _compact(keep, torch.arange(d, device=device), k)


def value_scale(d: int, k: int, unbiased: bool) -> float:
    """The factor the values are sent with, rounded to fp32: ``d / K`` (unbiased) or 1."""
    return struct.unpack("f", struct.pack("f", d / k))[0] if unbiased else 1.0


#: ``check(vals, idx)``: sees the ``K`` values (``r_i * scale``) and their coordinates before
#: anything is written (payload or state); may raise (a value that overflowed fp32)
CheckValues = Callable[[torch.Tensor, torch.Tensor], None]


#: ``write(vals, payload) -> c_sel``: encode the ``K`` fp32 values into the payload and
#: return what they decode to (fp32, accumulated from ``0.0`` as a decoder does)
WriteValues = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``read(row, seed) -> vals``: the ``K`` fp32 values of one payload row
ReadValues = Callable[[torch.Tensor, int], torch.Tensor]


def write_fp32(vals: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
    """The plain value code: ``K`` fp32 values, then zero padding."""
    k = vals.numel()
    payload[: 4 * k].view(torch.float32).copy_(vals)
    payload[4 * k :].zero_()
    return vals + 0.0



def decode_rows(k: int, payloads, d: int, seeds, out, scale: float, add: bool,
                read: ReadValues | None, indices: Callable, scatter_add: Callable) -> None:
    """``out (+)= scale * sum_i C_i`` (:mod:`.sparse` order) with a backend's
    ``indices(seed, d, k, device)`` and ``scatter_add``; row ``i``'s indices come from
    ``seeds[i]``, so only the values are read from the payload (by ``read``, or as fp32)."""
    acc = accumulator(out, add)
    sets: dict[int, torch.Tensor] = {}  # one index set per distinct seed
    for i, seed in enumerate(seeds):
        vals = payloads[i, : 4 * k].view(torch.float32) if read is None else read(payloads[i], seed)
        if seed not in sets:
            sets[seed] = indices(seed, d, k, payloads.device)
        scatter_add(acc, sets[seed], vals, scale)
    if acc.data_ptr() != out.data_ptr():
        out.view(-1).copy_(acc)


def indices(seed: int, d: int, k: int, device, backend: str) -> torch.Tensor:
    """The ``k`` selected coordinates (int64, ascending) for ``seed``."""
    return IMPLS(backend).indices(seed, d, k, device)


def encode(unbiased: bool, k: int, fusion: Fusion, x, state, seed: int, payload,
           backend: str, write: WriteValues | None = None,
           check: CheckValues | None = None) -> None:
    """Write the Random-K payload of ``r = prologue(x)`` (values coded by ``write``, fp32
    by default) and apply the epilogue; ``check`` sees the values first."""
    IMPLS(backend).encode(unbiased, k, fusion, x, state, seed, payload, write, check)


def decode_sum(k: int, payloads, d: int, seeds, out, scale: float, add: bool,
               backend: str, read: ReadValues | None = None) -> None:
    """``out (+)= scale * sum_i C_i``; row ``i``'s indices come from ``seeds[i]``."""
    IMPLS(backend).decode_sum(k, payloads, d, seeds, out, scale, add, read)
