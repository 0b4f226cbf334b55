"""Triton side of :mod:`.fusion`: the prologue and epilogue every encode kernel inlines.

``RESIDUAL`` and ``UPDATE`` are the :class:`.fusion.Residual` / :class:`.fusion.Update`
codes, as constexprs. Launch with ``enable_fp_fusion=False``: the twin rounds every
product and sum.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .fusion import Fusion, Residual, Update

R_SUB = tl.constexpr(int(Residual.SUB))
R_ERROR = tl.constexpr(int(Residual.ERROR))
U_ADD = tl.constexpr(int(Update.ADD))
U_ERROR = tl.constexpr(int(Update.ERROR))


def fusion_args(fusion: Fusion) -> dict:
    """Runtime scalars and constexpr flags of a fusion, as kernel keyword arguments."""
    return dict(**fusion.scalars(), MOMENTUM=fusion.momentum,
                RESIDUAL=int(fusion.residual_code), UPDATE=int(fusion.update_code))


@triton.jit
def load_residual(grad_ptr, v_ptr, u_ptr, h_ptr, offs, mask, keep, take, gamma,
                  MOMENTUM: tl.constexpr, RESIDUAL: tl.constexpr):
    """``(r, v, u)`` at ``offs``: the residual and the new momenta (not yet stored)."""
    src = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = src
    u = src
    if MOMENTUM >= 1:
        v = tl.load(v_ptr + offs, mask=mask, other=0.0) * keep + src * take
        src = v
    if MOMENTUM == 2:
        u = tl.load(u_ptr + offs, mask=mask, other=0.0) * keep + v * take
        src = u
    if RESIDUAL == R_SUB:
        r = src - tl.load(h_ptr + offs, mask=mask, other=0.0)
    elif RESIDUAL == R_ERROR:
        r = tl.load(h_ptr + offs, mask=mask, other=0.0) + src * gamma
    else:
        r = src
    return r, v, u


@triton.jit
def store_state(v_ptr, u_ptr, h_ptr, offs, mask, r, c, v, u, beta,
                MOMENTUM: tl.constexpr, UPDATE: tl.constexpr):
    """Write the new momenta and apply the ``h`` update with ``c = C(r)``."""
    if MOMENTUM >= 1:
        tl.store(v_ptr + offs, v, mask=mask)
    if MOMENTUM == 2:
        tl.store(u_ptr + offs, u, mask=mask)
    if UPDATE == U_ADD:
        h = tl.load(h_ptr + offs, mask=mask, other=0.0)
        tl.store(h_ptr + offs, h + c * beta, mask=mask)
    elif UPDATE == U_ERROR:
        tl.store(h_ptr + offs, r - c, mask=mask)
