"""Does decode-and-sum of n payloads allocate a dense tensor per payload?

Measured with ``torch.profiler`` (``profile_memory=True``): every op's own allocations
(``self_cpu_memory_usage`` / ``self_device_memory_usage``, net bytes allocated inside
the op) are listed, and those of at least ``2 * d`` bytes -- the size of a dense fp16
tensor of ``d`` elements, so a dense temporary of any float dtype counts -- are counted.
The output tensor is preallocated and passed as ``out``, so a decode-and-sum that
materialises nothing dense counts 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def allocations(fn: Callable[[], object], device: torch.device) -> list[int]:
    """Sizes in bytes of the (net, per-op) allocations made while running ``fn()``."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
    sizes = []
    for event in prof.events():
        if event.name == "[memory]":
            continue
        used = event.self_cpu_memory_usage if device.type == "cpu" else getattr(
            event, "self_device_memory_usage", 0)
        if used > 0:
            sizes.append(int(used))
    return sizes


def describe(fn, baseline_fn, d: int, n: int, device: torch.device) -> str:
    """One line: dense-size allocations (>= 2d bytes) of ``fn`` and of the baseline."""
    ours, theirs = allocations(fn, device), allocations(baseline_fn, device)
    dense = [s for s in ours if s >= 2 * d]
    return (f"allocations >= 2d bytes for {n} payloads: {len(dense)} "
            f"(largest allocation {max(ours, default=0) / 1024:.0f} KiB); "
            f"baseline {sum(s >= 2 * d for s in theirs)}")
