"""Natural baselines, timed in the same run as the gradpack op they stand beside.

Each is what a user would write without gradpack: ``torch.topk`` for Top-K,
``torch.randperm`` selection for Random-K, ``numpy.packbits`` for sign packing, and an
eager torch composition of the same math (torch's own RNG instead of Philox, codes
packed with shifts) for the quantizers and for every error-feedback step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

EF14_LR = 0.1


def count(arg: str, d: int) -> int:
    """``k`` of a ``topk:R`` / ``randk:R`` spec, exactly as the compressor computes it (so
    the baseline selects the same number of coordinates)."""
    from gradpack.compressors import from_spec

    return from_spec(f"topk:{arg}", backend="torch").k(d)


def pack(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Codes of ``width`` bits (1, 2, 4 or 8) packed little-endian into bytes."""
    per = 8 // width
    codes = codes.to(torch.uint8)
    if codes.numel() % per:
        codes = F.pad(codes, (0, per - codes.numel() % per))
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=codes.device)
    return (codes.view(-1, per) << shifts).sum(1, dtype=torch.uint8)


def _sign(r, args):
    scale = r.abs().mean()
    neg = r < 0
    pack(neg, 1)
    return torch.where(neg, -scale, scale)


def _ssign(r, args):
    norm = r.norm()
    neg = torch.rand_like(r) >= 0.5 + r * (0.5 / norm)
    pack(neg, 1)
    return torch.where(neg, -norm, norm)


def _qsgd(r, args):
    levels = int(args[0])
    bucket = int(args[1]) if len(args) > 1 else 512
    d = r.numel()
    rb = F.pad(r, (0, (-d) % bucket)).view(-1, bucket)
    norm = rb.norm(dim=1, keepdim=True)
    a = rb.abs() * (levels / norm)
    floor = a.floor()
    level = floor + (torch.rand_like(a) < a - floor)
    width = 1 + math.ceil(math.log2(levels + 1))
    codes = level.to(torch.int64) | ((rb < 0).to(torch.int64) << (width - 1))
    if width in (1, 2, 4, 8):
        pack(codes.view(-1), width)
    c = level * (norm / levels)
    return torch.where(rb < 0, -c, c).view(-1)[:d]


def _topk(r, args):
    idx = torch.topk(r.abs(), count(args[0], r.numel()), sorted=False).indices
    return torch.zeros_like(r).index_copy_(0, idx, r[idx])


def _randk(r, args):
    d = r.numel()
    k = count(args[0], d)
    idx = torch.randperm(d, device=r.device)[:k]
    scale = 1.0 if "biased" in args[1:] else d / k
    return torch.zeros_like(r).index_copy_(0, idx, r[idx] * scale)


#: eager torch composition of each compressor family: residual -> dense C(residual)
EAGER: dict[str, Callable] = {
    "identity": lambda r, args: r.clone(),
    "fp16": lambda r, args: r.half().float(),
    "bf16": lambda r, args: r.bfloat16().float(),
    "sign": _sign,
    "ssign": _ssign,
    "qsgd": _qsgd,
    "topk": _topk,
    "randk": _randk,
}


def _encode_baseline(family: str, args: list[str], x: torch.Tensor):
    """``(name, fn)`` of the encode baseline."""
    if family == "sign":
        xn = x.numpy() if x.device.type == "cpu" else None
        if xn is not None:
            return "numpy.packbits", lambda: (
                np.packbits(xn < 0, bitorder="little"), np.abs(xn).mean())
    if family == "topk":
        k = count(args[0], x.numel())
        return "torch.topk", lambda: torch.topk(x.abs(), k, sorted=False)
    if family == "randk":
        k = count(args[0], x.numel())
        return "randperm", lambda: x[torch.randperm(x.numel(), device=x.device)[:k]]
    eager = EAGER.get(family)
    return ("eager torch", lambda: eager(x, args)) if eager else (None, None)


def baseline(op: str, spec: str, x: torch.Tensor, state: dict, decode_each=None):
    """``(name, fn)`` of the baseline for ``op`` of ``spec`` on input ``x``, or ``(None, None)``.

    ``state["h"]`` is updated in place by the error-feedback baselines, as by the ops.
    ``decode_each`` is a callable returning the list of dense decodes (decode_sum baseline).
    """
    family, *args = spec.split(":")
    if op == "encode":
        return _encode_baseline(family, args, x)
    if op == "decode_sum":
        return "decode each + stack.sum", lambda: torch.stack(decode_each()).sum(0)
    eager = EAGER.get(family)
    if eager is None:
        return None, None
    h = state["h"]
    if op == "ef21":  # r = g - h ; h += C(r)
        return "eager torch", lambda: h.add_(eager(x - h, args))
    if op == "ef14":  # r = h + lr g ; h = r - C(r)
        def ef14():
            r = h + x * EF14_LR
            torch.sub(r, eager(r, args), out=h)
        return "eager torch", ef14
    raise ValueError(f"unknown op {op!r}")
