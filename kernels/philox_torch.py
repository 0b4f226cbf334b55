"""Torch twin of Triton's Philox (:mod:`.philox`): ``tl.randint4x``, ``tl.randint``,
``tl.rand``, and the element stream of uniforms, bit for bit.

All arithmetic is done on int64 tensors holding uint32 values; the 32x32 multiply is
split in 16-bit halves so nothing overflows int64. Eager and readable: about 250 int64
tensor operations per Philox block (the native CPU backend, :mod:`.philox_cpu`, is the
fast path).
"""

from __future__ import annotations

import torch

from .philox import KEY_A, KEY_B, LANES, M32, N_ROUNDS, ROUND_A, ROUND_B, UNIFORM_SCALE, key


def _mul_hilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product of uint32 constant ``a`` and ``b``."""
    t_hi = (b >> 16) * a  # < 2**48
    t_lo = (b & 0xFFFF) * a  # < 2**48
    mid = t_hi + (t_lo >> 16)  # == (a*b) >> 16
    return mid >> 16, ((mid & 0xFFFF) << 16) | (t_lo & 0xFFFF)


def randint4x(
    seed: int, offsets: torch.Tensor, n_rounds: int = N_ROUNDS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four blocks of uint32 values (as int64 tensors), like ``tl.randint4x(seed, offsets)``."""
    k0, k1 = key(seed)
    offsets = offsets.to(torch.int64)
    c0 = offsets & M32
    c1 = (offsets >> 32) & M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hilo(ROUND_B, c2)
        hi_a, lo_a = _mul_hilo(ROUND_A, c0)
        c0 = hi_b ^ c1 ^ k0
        c2 = hi_a ^ c3 ^ k1
        c1 = lo_b
        c3 = lo_a
        k0 = (k0 + KEY_A) & M32
        k1 = (k1 + KEY_B) & M32
    return c0, c1, c2, c3


def to_int32(u: torch.Tensor) -> torch.Tensor:
    """Reinterpret uint32 values held in int64 as int32 (two's complement)."""
    return (u - ((u >> 31) << 32)).to(torch.int32)


def randint(seed: int, offsets: torch.Tensor, n_rounds: int = N_ROUNDS) -> torch.Tensor:
    """Like ``tl.randint``: one block of random int32 values."""
    return to_int32(randint4x(seed, offsets, n_rounds)[0])


def uint_to_uniform(u: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for uint32 values: float32 in [0, 1)."""
    x = u - ((u >> 31) << 32)  # as signed int32, still in int64
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def rand(seed: int, offsets: torch.Tensor, n_rounds: int = N_ROUNDS) -> torch.Tensor:
    """Like ``tl.rand``: float32 uniform in [0, 1), bit-identical to Triton's."""
    return uint_to_uniform(randint4x(seed, offsets, n_rounds)[0])


def uniforms(seed: int, lo: int, hi: int, device="cpu") -> torch.Tensor:
    """The element stream's uniforms ``u_lo .. u_{hi-1}`` (:mod:`.philox`): lane ``i % 4``
    of the block at counter ``i // 4``."""
    q0, q1 = lo // LANES, -(-hi // LANES)
    blocks = torch.stack(randint4x(seed, torch.arange(q0, q1, device=device)), 1)
    return uint_to_uniform(blocks.reshape(-1)[lo - q0 * LANES : hi - q0 * LANES])
