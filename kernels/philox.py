"""Philox 4x32-10, the counter-based generator behind every random choice (shared spec).

Every backend draws exactly Triton's numbers: ``tl.randint4x(seed, c)`` returns the four
32-bit words of Philox 4x32 with ``N_ROUNDS`` rounds, key ``(seed mod 2**32, seed >> 32)``
and counter ``(c mod 2**32, c >> 32, 0, 0)``; ``tl.rand`` maps a word to a float32 uniform
in ``[0, 1)`` (:func:`.philox_torch.uint_to_uniform`).

**The element stream.** Element ``i`` of a stochastic code takes lane ``i % 4`` of the
Philox block at counter ``i // 4`` (:func:`uniform_counter`), so one Philox evaluation
serves four consecutive elements: ``u_i = uniform(randint4x(seed, i // 4)[i % 4])``.
Random-K's index draws use the blocks differently (:mod:`.randk`). The torch twin is
:mod:`.philox_torch`; Triton draws with ``tl.randint4x``; the native CPU backend with
:mod:`.philox_cpu`. Seeds are 64-bit keys in ``[0, 2**63)``; no global RNG is read or
advanced.
"""

from __future__ import annotations

N_ROUNDS = 10
KEY_A = 0x9E3779B9  # key schedule increments
KEY_B = 0xBB67AE85
ROUND_A = 0xD2511F53  # round multipliers
ROUND_B = 0xCD9E8D57
M32 = 0xFFFFFFFF
#: (2**23 - 1) / 2**23 * 2**-31 rounded to fp32: Triton's ``uint_to_uniform_float`` scale
UNIFORM_SCALE = 4.6566127342e-10
LANES = 4  # uniforms per Philox block in the element stream

SEED_MAX = 2**63
M64 = 2**64 - 1


def uniform_counter(i: int) -> tuple[int, int]:
    """``(counter, lane)`` of element ``i``'s uniform in the element stream."""
    return i // LANES, i % LANES


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


def key(seed: int) -> tuple[int, int]:
    """The two 32-bit key words of ``seed``."""
    check_seed(seed)
    return seed & M32, (seed >> 32) & M32
