"""Triton side of the Philox twin: a kernel that only draws numbers, for the tests
that prove :mod:`gradpack.kernels.philox` reproduces ``tl.randint4x`` / ``tl.rand``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .philox import check_seed


@triton.jit
def _draw_kernel(seed, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    r0, r1, r2, r3 = tl.randint4x(seed, offs)
    tl.store(out_ptr + 0 * n + offs, r0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 1 * n + offs, r1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 2 * n + offs, r2.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 3 * n + offs, r3.to(tl.int32, bitcast=True), mask=mask)
    u = tl.rand(seed, offs)
    tl.store(out_ptr + 4 * n + offs, u.to(tl.int32, bitcast=True), mask=mask)


def draw(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[5, n] int32: the four ``randint4x`` streams and the bits of ``rand`` at offsets 0..n-1."""
    check_seed(seed)
    out = torch.empty(5, n, dtype=torch.int32, device=device)
    block = 1024
    _draw_kernel[(triton.cdiv(n, block),)](seed, out, n, BLOCK=block)
    return out
