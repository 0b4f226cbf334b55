"""The roofline: a copy of the same bytes, measured in the same run on the same device.

``dst.copy_(src)`` of the fp32 input reads ``4d`` and writes ``4d`` bytes; its achieved
GB/s is what the memory system gives a streaming op here and now. Each benchmarked op
is charged the bytes it must move at least (:func:`op_bytes`), and reported as GB/s and
as a fraction of the copy's GB/s.
"""

from __future__ import annotations

import torch

from .timing import median_time

OPS = ("encode", "decode_sum", "ef21", "ef14")


def copy_gbps(x: torch.Tensor, *, repeats: int) -> tuple[float, float]:
    """``(seconds, GB/s)`` of copying ``x`` into a preallocated tensor."""
    dst = torch.empty_like(x)
    seconds = median_time(lambda: dst.copy_(x), x.device, repeats=repeats)
    return seconds, 2 * x.numel() * x.element_size() / seconds / 1e9


def op_bytes(op: str, d: int, payload: int, n: int = 4) -> int:
    """Bytes an op must move for ``d`` fp32 elements and a ``payload``-byte payload.

    encode: read x, write payload. decode_sum: read n payloads, write the fp32 sum.
    ef21 / ef14: read grad and h, write h and the payload.
    """
    if op == "encode":
        return 4 * d + payload
    if op == "decode_sum":
        return n * payload + 4 * d
    if op in ("ef21", "ef14"):
        return 12 * d + payload
    raise ValueError(f"unknown op {op!r}")
