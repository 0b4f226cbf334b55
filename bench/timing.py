"""Timing: warm up, then the median of repeated calls, with device synchronisation.

The first call is always a warm-up, never a sample (it may compile: Triton kernels, the
compiled Philox of the CPU path). After a warm-up slower than ``slow_s`` a single timed
call is the sample, so slow ops do not dominate the run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def timed(
    fn: Callable[[], object],
    device: torch.device,
    *,
    repeats: int = 5,
    slow_s: float = 1.0,
) -> tuple[float, float]:
    """``(median, first)``: the median wall time of ``fn()`` in seconds over ``repeats``
    calls after one warm-up, and the warm-up's own time."""
    first = _once(fn, device)
    if first > slow_s:
        return _once(fn, device), first
    return statistics.median(_once(fn, device) for _ in range(max(1, repeats))), first


def median_time(fn: Callable[[], object], device: torch.device, **kw) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after one warm-up."""
    return timed(fn, device, **kw)[0]
