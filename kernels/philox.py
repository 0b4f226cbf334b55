"""Torch twin of Triton's counter-based Philox 4x32-10 (``tl.randint4x``, ``tl.randint``,
``tl.rand``).

For the same ``(seed, offsets)`` these return exactly the numbers Triton's kernels
draw, bit for bit, so a stochastic compressor gives identical payloads on both
backends. All arithmetic is done on int64 tensors holding uint32 values; the 32x32
multiply is split in 16-bit halves so nothing overflows int64.

Seeds are 64-bit keys in ``[0, 2**63)``; offsets are non-negative element counters.
No global RNG is read or advanced.

Speed: eagerly, ten rounds cost some 250 int64 tensor operations per draw. Draws of at
least ``COMPILE_MIN`` numbers therefore run the same rounds through ``torch.compile``
(one fused CPU loop, integer arithmetic only, so the bits cannot change; tested), compiled
once per process and cached on disk by inductor. Set ``GRADPACK_NO_COMPILE=1``, or lack a
C++ compiler, and everything stays eager.
"""

from __future__ import annotations

import os
import warnings

import torch

N_ROUNDS = 10
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_M32 = 0xFFFFFFFF
# (2**23 - 1) / 2**23 * 2**-31 in fp32: Triton's uint_to_uniform_float scale
_UNIFORM_SCALE = torch.tensor(4.6566127342e-10, dtype=torch.float32)

SEED_MAX = 2**63


M64 = 2**64 - 1


def mix64(z: int) -> int:
    """splitmix64 finaliser: a bijection of 64-bit ints with good avalanche."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def derive_seed(seed: int, tag: int) -> int:
    """An independent key for a second stream of one ``seed`` (``tag`` names the stream)."""
    return mix64(seed ^ mix64(tag & M64)) % SEED_MAX


def check_seed(seed: int) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < SEED_MAX:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def _mul_hilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product of uint32 constant ``a`` and ``b``."""
    t_hi = (b >> 16) * a  # < 2**48
    t_lo = (b & 0xFFFF) * a  # < 2**48
    mid = t_hi + (t_lo >> 16)  # == (a*b) >> 16
    return mid >> 16, ((mid & 0xFFFF) << 16) | (t_lo & 0xFFFF)


COMPILE_MIN = 1 << 18
_compiled = None  # the compiled rounds, False once compiling failed


def _rounds(offsets: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor, n_rounds: int):
    c0 = offsets & _M32
    c1 = (offsets >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hilo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hilo(_ROUND_A, c0)
        c0 = hi_b ^ c1 ^ k0
        c2 = hi_a ^ c3 ^ k1
        c1 = lo_b
        c3 = lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _draw(offsets: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor, n_rounds: int,
          uniform: bool):
    c = _rounds(offsets, k0, k1, n_rounds)
    return uint_to_uniform(c[0]) if uniform else c


def _run(seed: int, offsets: torch.Tensor, n_rounds: int, uniform: bool):
    """Eager, or through the compiled twin for large CPU draws (see module doc)."""
    global _compiled
    check_seed(seed)
    offsets = offsets.to(torch.int64)
    key = [torch.tensor(k, dtype=torch.int64, device=offsets.device)
           for k in (seed & _M32, (seed >> 32) & _M32)]
    eager = (offsets.numel() < COMPILE_MIN or offsets.device.type != "cpu"
             or _compiled is False or os.environ.get("GRADPACK_NO_COMPILE"))
    if eager:
        return _draw(offsets, *key, n_rounds, uniform)
    if _compiled is None:
        _compiled = torch.compile(_draw, dynamic=True)
    try:
        return _compiled(offsets, *key, n_rounds, uniform)
    except Exception as exc:  # no C++ compiler, unsupported platform: stay eager
        warnings.warn(f"gradpack: compiled Philox unavailable ({exc!r:.200}); using eager torch",
                      RuntimeWarning, stacklevel=2)
        _compiled = False
        return _draw(offsets, *key, n_rounds, uniform)


def randint4x(
    seed: int, offsets: torch.Tensor, n_rounds: int = N_ROUNDS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four blocks of uint32 values (as int64 tensors), like ``tl.randint4x(seed, offsets)``."""
    return _run(seed, offsets, n_rounds, uniform=False)


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
    return x.to(torch.float32) * _UNIFORM_SCALE


def rand(seed: int, offsets: torch.Tensor, n_rounds: int = N_ROUNDS) -> torch.Tensor:
    """Like ``tl.rand``: float32 uniform in [0, 1), bit-identical to Triton's."""
    return _run(seed, offsets, n_rounds, uniform=True)
