"""Triton kernels of :mod:`.randk`: the Philox index stream, the value gather (fused
prologue) and the dense epilogue pass. Launch with ``enable_fp_fusion=False``.

The first-distinct selection over the draws (one stable sort, a scatter and a cumsum
over ``O(K)`` values) runs as torch ops on the same device (:func:`.randk.indices_from_draws`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fusion import Fusion
from .fusion_triton import fusion_args, load_residual, store_state
from .randk import CheckValues, WriteValues, decode_rows, indices_from_draws, value_scale
from .sparse_triton import scatter_add

BLOCK = 1024


@triton.jit
def _bounded(hi, lo, d):
    """floor((hi * 2**32 + lo) * d / 2**64) for uint32 ``hi``, ``lo``."""
    d64 = d.to(tl.uint64)
    hi64 = hi.to(tl.uint64)
    lo64 = lo.to(tl.uint64)
    return ((hi64 * d64 + ((lo64 * d64) >> 32)) >> 32).to(tl.int64)


@triton.jit(do_not_specialize=["seed", "m"])
def _draws_kernel(seed: tl.int64, out_ptr, m, d, BLOCK: tl.constexpr):
    q = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    c0, c1, c2, c3 = tl.randint4x(seed, q)
    tl.store(out_ptr + 2 * q, _bounded(c0, c1, d), mask=2 * q < m)
    tl.store(out_ptr + 2 * q + 1, _bounded(c2, c3, d), mask=2 * q + 1 < m)


@triton.jit
def _gather_kernel(x_ptr, v_ptr, u_ptr, h_ptr, idx_ptr, vals_ptr, k, keep, take, gamma, beta,
                   scale, MOMENTUM: tl.constexpr, RESIDUAL: tl.constexpr, UPDATE: tl.constexpr,
                   SCALED: tl.constexpr, BLOCK: tl.constexpr):
    """vals[j] = r[idx[j]] (* scale), r from the prologue (state not written here)."""
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = j < k
    i = tl.load(idx_ptr + j, mask=live, other=0)
    r, v, u = load_residual(x_ptr, v_ptr, u_ptr, h_ptr, i, live, keep, take, gamma,
                            MOMENTUM, RESIDUAL)
    if SCALED:
        r = r * scale
    tl.store(vals_ptr + j, r, mask=live)


@triton.jit
def _epilogue_kernel(x_ptr, v_ptr, u_ptr, h_ptr, sel_ptr, c_ptr, d, keep, take, gamma, beta,
                     scale, MOMENTUM: tl.constexpr, RESIDUAL: tl.constexpr,
                     UPDATE: tl.constexpr, SCALED: tl.constexpr, CODED: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Momenta and ``h`` update with ``c = where(selected, value + 0.0, 0.0)``, or with the
    dense ``c`` of a value code (``CODED``: zero off the selection)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    r, v, u = load_residual(x_ptr, v_ptr, u_ptr, h_ptr, offs, mask, keep, take, gamma,
                            MOMENTUM, RESIDUAL)
    if CODED:
        c = tl.load(c_ptr + offs, mask=mask, other=0.0)
    else:
        val = r
        if SCALED:
            val = r * scale
        sel = tl.load(sel_ptr + offs, mask=mask, other=0) != 0
        c = tl.where(sel, val + 0.0, 0.0)
    store_state(v_ptr, u_ptr, h_ptr, offs, mask, r, c, v, u, beta, MOMENTUM, UPDATE)


def draws(seed: int, m: int, d: int, device) -> torch.Tensor:
    """Twin of :func:`.randk_torch.draws`."""
    out = torch.empty(m, dtype=torch.int64, device=device)
    _draws_kernel[(triton.cdiv((m + 1) // 2, BLOCK),)](seed, out, m, d, BLOCK=BLOCK)
    return out


def indices(seed: int, d: int, k: int, device) -> torch.Tensor:
    """Twin of :func:`.randk_torch.indices`."""
    return indices_from_draws(draws, seed, d, k, device, extend_on_host=False)


def encode(unbiased: bool, k: int, fusion: Fusion, x, state, seed: int, payload,
           write: WriteValues | None = None, check: CheckValues | None = None) -> None:
    """Twin of :func:`.randk_torch.encode`."""
    d = x.numel()
    idx = indices(seed, d, k, x.device)
    scale = value_scale(d, k, unbiased)
    args = fusion_args(fusion)
    v, u, h = (state.get(name, x) for name in ("v", "u", "h"))
    coded = write is not None
    # unchecked fp32 values go straight into the payload; checked or coded ones via a buffer
    direct = not coded and check is None
    vals = payload[: 4 * k].view(torch.float32) if direct else \
        torch.empty(k, dtype=torch.float32, device=x.device)
    _gather_kernel[(triton.cdiv(k, BLOCK),)](
        x, v, u, h, idx, vals, k, scale=scale, SCALED=scale != 1.0, **args, BLOCK=BLOCK,
        enable_fp_fusion=False)
    if check is not None:
        check(vals, idx)  # nothing is written before this
    if coded:
        c_sel = write(vals, payload)
    else:
        if not direct:
            payload[: 4 * k].view(torch.float32).copy_(vals)
        payload[4 * k :].zero_()
    if not fusion.is_identity:
        # CODED: the dense decoded c; otherwise a selection mask and c from r in the kernel
        sel = torch.zeros(d, dtype=torch.float32 if coded else torch.uint8, device=x.device)
        sel[idx] = c_sel if coded else 1
        _epilogue_kernel[(triton.cdiv(d, BLOCK),)](
            x, v, u, h, sel, sel, d, scale=scale, **args, BLOCK=BLOCK, SCALED=scale != 1.0,
            CODED=coded, enable_fp_fusion=False)


def decode_sum(k: int, payloads, d: int, seeds, out, scale: float, add: bool,
               read=None) -> None:
    """Twin of :func:`.randk_torch.decode_sum`."""
    decode_rows(k, payloads, d, seeds, out, scale, add, read, indices, scatter_add)
