"""Triton side of :mod:`.sparse`: the decode-side scatter-add of one payload row.

Indices are validated by the caller; the store is masked to ``[0, d)`` all the same,
so a bad index can never write out of bounds. Launch with ``enable_fp_fusion=False``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fusion import fp32

BLOCK = 1024


@triton.jit
def _scatter_add_kernel(acc_ptr, idx_ptr, vals_ptr, k, d, scale,
                        HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = j < k
    i = tl.load(idx_ptr + j, mask=live, other=0).to(tl.int64)
    ok = live & (i >= 0) & (i < d)
    v = tl.load(vals_ptr + j, mask=live, other=0.0)
    if HAS_SCALE:
        v = v * scale
    a = tl.load(acc_ptr + i, mask=ok, other=0.0)
    tl.store(acc_ptr + i, a + v, mask=ok)


def scatter_add(acc: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor,
                       scale: float) -> None:
    """Twin of :func:`.sparse_torch.scatter_add`."""
    k = idx.numel()
    _scatter_add_kernel[(triton.cdiv(k, BLOCK),)](
        acc, idx, vals, k, acc.numel(), fp32(scale), HAS_SCALE=scale != 1.0, BLOCK=BLOCK,
        enable_fp_fusion=False)
