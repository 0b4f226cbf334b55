"""Triton side of :mod:`.philox`: the element stream's uniforms (inlined by the stochastic
encode kernels), and a kernel that only draws numbers, for the tests that prove
:mod:`.philox_torch` reproduces ``tl.randint4x`` / ``tl.rand``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .philox import check_seed


@triton.jit
def uniform(seed, offs):
    """Element ``offs``' uniform: lane ``offs % 4`` of ``randint4x(seed, offs // 4)``."""
    c0, c1, c2, c3 = tl.randint4x(seed, offs // 4)
    lane = offs % 4
    word = tl.where(lane == 0, c0, tl.where(lane == 1, c1, tl.where(lane == 2, c2, c3)))
    return tl.random.uint_to_uniform_float(word)


@triton.jit(do_not_specialize=["seed"])
def _draw_kernel(seed: tl.int64, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    r0, r1, r2, r3 = tl.randint4x(seed, offs)
    tl.store(out_ptr + 0 * n + offs, r0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 1 * n + offs, r1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 2 * n + offs, r2.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 3 * n + offs, r3.to(tl.int32, bitcast=True), mask=mask)
    u = tl.rand(seed, offs)
    tl.store(out_ptr + 4 * n + offs, u.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 5 * n + offs, uniform(seed, offs).to(tl.int32, bitcast=True), mask=mask)


def draw(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[6, n] int32: the four ``randint4x`` streams, the bits of ``rand`` at offsets 0..n-1,
    and the bits of the element stream's uniforms 0..n-1."""
    check_seed(seed)
    out = torch.empty(6, n, dtype=torch.int32, device=device)
    block = 1024
    _draw_kernel[(triton.cdiv(n, block),)](seed, out, n, BLOCK=block)
    return out
