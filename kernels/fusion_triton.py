"""Triton side of :mod:`.fusion`: the prologue and epilogue every encode kernel inlines.

``RESIDUAL``: 0 none, 1 ``r = src - h``, 2 ``r = h + gamma * src``.
``UPDATE``: 0 none, 1 ``h += beta * c``, 2 ``h = r - c``.
Launch with ``enable_fp_fusion=False``: the twin rounds every product and sum.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .fusion import Fusion

RESIDUAL_CODES = {"none": 0, "sub": 1, "error": 2}
UPDATE_CODES = {"none": 0, "add": 1, "error": 2}


def fp32(x: float) -> float:
    """``x`` rounded to float32, as the kernels and the twin both use it."""
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def fusion_args(fusion: Fusion) -> dict:
    """Runtime scalars and constexpr flags of a fusion, as kernel keyword arguments."""
    return dict(
        keep=fp32(1.0 - fusion.eta),
        take=fp32(fusion.eta),
        gamma=fp32(fusion.gamma),
        beta=fp32(fusion.beta),
        MOMENTUM=fusion.momentum,
        RESIDUAL=RESIDUAL_CODES[fusion.residual],
        UPDATE=UPDATE_CODES[fusion.update],
    )


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
    if RESIDUAL == 1:
        r = src - tl.load(h_ptr + offs, mask=mask, other=0.0)
    elif RESIDUAL == 2:
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
    if UPDATE == 1:
        h = tl.load(h_ptr + offs, mask=mask, other=0.0)
        tl.store(h_ptr + offs, h + c * beta, mask=mask)
    elif UPDATE == 2:
        tl.store(h_ptr + offs, r - c, mask=mask)
