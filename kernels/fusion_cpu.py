"""Native CPU side of :mod:`.fusion` (numba): the prologue and epilogue every native kernel
runs over one block of elements, and the float conversions they need.

A native kernel works on a block of ``n`` elements starting at ``lo`` held in fp32 scratch
arrays (the Triton kernels' registers): :func:`residual` fills ``r[0:n]`` with the
residual of the fusion prologue (``write``: store the new momenta too), the compressor
turns ``r`` into codes and ``c = C(r)``, and :func:`update` applies the ``h`` epilogue.
Each stage is a plain loop over the block with its branches outside the loop, so LLVM
vectorizes it; every fp32 operation is the twin's, in the twin's order, one rounding
each (numba does not contract ``a * b + c`` into a fused multiply-add without fast-math,
and :data:`.native.JIT` has none; the tests compare bit for bit).

Parallelism: :func:`.native.run_blocks` splits a kernel's blocks into one contiguous range per
thread (``torch.get_num_threads()`` of them, the caller's included) and runs the serial
numba kernel on each range from a thread pool; the kernels release the GIL (``nogil``).
Each range writes only its own elements and words, so results do not depend on the
thread count. (A ``prange`` kernel computes the same, but numba re-optimizes the linked
callees of a parfor body about three times over: measured here, the cold compile of the
encode, stats and decode-and-sum kernels took ~58 s with ``prange`` and ~16 s without, for
no faster a run.)

Sources are fp32, or fp16/bf16 held as their int16 bits (:func:`.native.array`): a kernel
receives both arrays (the unused one empty) and ``xkind`` (:class:`.format.Kind`'s FP32,
FP16 or BF16 code), so it compiles once for every input dtype. Conversions between fp32
and fp16/bf16 bits are integer arithmetic (numba has no float16 on the CPU), equal to
torch's on every fp32 bit pattern (``tests/test_native_elementwise.py``).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .format import Kind
from .fusion import Fusion, Residual, Update
from .native import JIT, array

FP32, FP16, BF16 = int(Kind.FP32), int(Kind.FP16), int(Kind.BF16)
SUB, ERROR = int(Residual.SUB), int(Residual.ERROR)
ADD, SET_ERROR = int(Update.ADD), int(Update.ERROR)

_TWO_M24 = np.float32(2.0**-24)  # fp16's subnormal unit, exact in fp32


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE bits of the float32 ``x`` as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, b):
    """The float32 whose IEEE bits are the low 32 bits of the integer ``b``."""
    if not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if b.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif b.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(b), codegen


@nb.njit(inline="always", **JIT)
def half_to_f32(hb):
    """fp16 bits (any integer holding them in its low 16 bits) -> float32, exactly; a NaN
    is quieted, as x86's ``vcvtph2ps`` (torch's ``.float()``) does."""
    h = np.int64(hb) & 0xFFFF
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:  # zero or subnormal: m * 2**-24, exact
        mag = np.float32(m) * _TWO_M24
        return -mag if sign else mag
    if e == 0x1F:
        return bits_f32(sign | 0x7F800000 | (m << 13) | (0x400000 if m else 0))
    return bits_f32(sign | ((e + 112) << 23) | (m << 13))


@nb.njit(inline="always", **JIT)
def f32_to_half(f):
    """float32 -> fp16 bits (int64 in [0, 2**16)): IEEE round to nearest even, subnormals
    included, overflow to inf, NaN quieted keeping the top payload bits (``.half()``)."""
    b = np.int64(f32_bits(f)) & 0xFFFFFFFF
    sign = (b >> 16) & 0x8000
    a = b & 0x7FFFFFFF
    if a > 0x7F800000:  # NaN
        res = 0x7E00 | ((a >> 13) & 0x3FF)
    elif a >= 0x477FF000:  # >= 65520: rounds to inf
        res = 0x7C00
    elif a >= 0x38800000:  # normal: rebias the exponent, round off 13 mantissa bits
        res = (a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13
    elif a < 0x33000000:  # below 2**-25: rounds to zero
        res = 0
    else:  # subnormal: the 24-bit significand shifted right by 126 - e, rounded
        s = 126 - (a >> 23)
        m = (a & 0x7FFFFF) | 0x800000
        res = (m + (1 << (s - 1)) - 1 + ((m >> s) & 1)) >> s
    return sign | res


@nb.njit(inline="always", **JIT)
def bf16_to_f32(hb):
    """bf16 bits -> float32 (a 16-bit shift, exact)."""
    return bits_f32((np.int64(hb) & 0xFFFF) << 16)


@nb.njit(inline="always", **JIT)
def f32_to_bf16(f):
    """float32 -> bf16 bits (int64 in [0, 2**16)), round to nearest even; NaN -> 0x7FC0
    (:func:`.elementwise.to_bf16`)."""
    b = np.int64(f32_bits(f)) & 0xFFFFFFFF
    if f != f:
        return np.int64(0x7FC0)
    return (b + 0x7FFF + ((b >> 16) & 1)) >> 16


@nb.njit(**JIT)
def load(xf, xh, xkind, lo, n, r):
    """``r[0:n]`` = elements ``lo .. lo+n-1`` of the source as fp32."""
    # loops index views from 0: numba wraps negative indices, and only an index LLVM
    # knows is non-negative (a range variable) lets it drop that check and vectorize
    if xkind == FP32:
        xs = xf[lo : lo + n]
        for j in range(n):
            r[j] = xs[j]
    elif xkind == FP16:
        hs = xh[lo : lo + n]
        for j in range(n):
            r[j] = half_to_f32(hs[j])
    else:
        hs = xh[lo : lo + n]
        for j in range(n):
            r[j] = bf16_to_f32(hs[j])


@nb.njit(**JIT)
def residual(xf, xh, xkind, v, u, h, lo, n, momentum, rcode, keep, take, gamma, write, r):
    """``r[0:n]``: the fusion prologue's residual at elements ``lo .. lo+n-1``; with
    ``write`` the new momenta are stored in ``v`` (and ``u``)."""
    load(xf, xh, xkind, lo, n, r)
    vs = v[lo : lo + n]
    us = u[lo : lo + n]
    hs = h[lo : lo + n]
    if momentum == 1 and write:
        for j in range(n):
            vn = vs[j] * keep + r[j] * take
            vs[j] = vn
            r[j] = vn
    elif momentum == 1:
        for j in range(n):
            r[j] = vs[j] * keep + r[j] * take
    elif momentum == 2 and write:
        for j in range(n):
            vn = vs[j] * keep + r[j] * take
            un = us[j] * keep + vn * take
            vs[j] = vn
            us[j] = un
            r[j] = un
    elif momentum == 2:
        for j in range(n):
            vn = vs[j] * keep + r[j] * take
            r[j] = us[j] * keep + vn * take
    if rcode == SUB:
        for j in range(n):
            r[j] = r[j] - hs[j]
    elif rcode == ERROR:
        for j in range(n):
            r[j] = hs[j] + r[j] * gamma


@nb.njit(**JIT)
def update(h, lo, n, ucode, beta, r, c):
    """The ``h`` epilogue at elements ``lo .. lo+n-1`` given ``r`` and ``c = C(r)``."""
    hs = h[lo : lo + n]
    if ucode == ADD:
        for j in range(n):
            hs[j] = hs[j] + c[j] * beta
    elif ucode == SET_ERROR:
        for j in range(n):
            hs[j] = r[j] - c[j]


_EMPTY_F32 = np.empty(0, dtype=np.float32)
_EMPTY_I16 = np.empty(0, dtype=np.int16)
_HALF_KINDS = {torch.float16: FP16, torch.bfloat16: BF16}


def sources(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """``(xf, xh, xkind)`` of a contiguous fp32/fp16/bf16 CPU tensor: zero-copy views."""
    a = array(x.reshape(-1))
    if x.dtype == torch.float32:
        return a, _EMPTY_I16, FP32
    if x.dtype in _HALF_KINDS:
        return _EMPTY_F32, a, _HALF_KINDS[x.dtype]
    raise ValueError(f"native kernels take float32, float16 or bfloat16 tensors, got {x.dtype}")


def state_arrays(fusion: Fusion, state) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(v, u, h)`` as numpy views of the fp32 state tensors (empty where unused)."""
    names = fusion.state_names()
    return tuple(  # type: ignore[return-value]
        state[k].detach().reshape(-1).numpy() if k in names else _EMPTY_F32 for k in "vuh")


def scalars(fusion: Fusion) -> tuple:
    """``(momentum, rcode, ucode, keep, take, gamma, beta)`` as the kernels take them."""
    s = fusion.scalars()
    return (np.int64(fusion.momentum), np.int64(fusion.residual_code),
            np.int64(fusion.update_code), np.float32(s["keep"]), np.float32(s["take"]),
            np.float32(s["gamma"]), np.float32(s["beta"]))
