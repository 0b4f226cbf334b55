"""The elementwise codes (shared spec: every backend of :mod:`.elementwise` imports this).

One :class:`Format` describes each code; ``Kind`` names it (a Triton kernel receives
``int(kind)`` as a constexpr, a native kernel as an int argument):

============  ======  ===========================  =====================================
kind          width   header (fp32)                 decoded value ``c``
============  ======  ===========================  =====================================
``FP32``      32      none                          ``r``
``FP16``      16      none                          ``fp16(clamp(r, +-65504))``
``BF16``      16      none                          ``bf16(r)``
``SIGN``      1       ``s = sum|r| / d``            ``s`` if bit == 0 (``r >= 0``) else ``-s``
``SSIGN``     1       ``n = sqrt(sum r^2)``         ``n`` if ``u < 1/2 + r / (2n)`` else ``-n``
``QSGD``      1+L     ``n_b = sqrt(sum_b r^2)``     ``(-1)^neg * l * (n_b / S)``
============  ======  ===========================  =====================================

QSGD with ``maxnorm`` (the p-norm quantization of seed 002 at ``p = inf``, as DIANA and
DORE use it) has ``n_b = max_b |r|`` instead: the same code and decoder, a smaller variance.

QSGD (Alistarh et al.): with ``a = |r| * (S / n_b)``, ``l = floor(a) + [u < a - floor(a)]``
(clamped to ``S``), field = ``l | neg << L``, ``L = ceil(log2(S + 1))``. ``u`` is element
``i``'s uniform of the Philox stream (:func:`.philox.uniform_counter`). A zero bucket has
``n_b = 0`` and decodes to zeros. For a tiny norm (``n_b < TINY``, e.g. a subnormal bucket
maximum) ``S / n_b`` would overflow, and for a huge one (``n_b >= HUGE``) it would be
subnormal (bits lost), so every backend scales first: with ``t = TINY_SCALE`` if
``n_b < TINY``, ``HUGE_SCALE`` if ``n_b >= HUGE``, else ``1``,
``a = (|r| t) * (S / (n_b t))`` (ssign likewise: ``1/2 + (r t) * (0.5 / (n t))``);
multiplying by a power of two is exact, so ``t = 1`` changes no bit (nor does
``HUGE_SCALE`` wherever ``S / n_b`` is a normal number). Header sums use :mod:`.treesum`'s
fixed order; every division and square root is correctly rounded; every backend performs
the same fp32 operations in the same order, without contraction into fused multiply-adds.

Overflow (finite input, header beyond fp32's exponent range). A sum of squares
overflows once ``|r|`` reaches about ``1.8e19``, and sign's sum of ``|r|`` can overflow
although the mean is representable. So each header sum has a rescue: the same tree sum
(same order) of the terms scaled by the power of two :func:`rescue_scale` (``|r| 2**-32``,
``(r 2**-80)**2``), finite for any finite fp32 ``r`` and ``d < 2**31``. Per segment, when
the plain sum is ``+inf`` (and only then, so every other header keeps its bits):

- sign: ``s = (sum' / d) * 2**32``; should that round past ``FP32_MAX`` while ``sum'`` is
  finite (the true mean is at most ``max |r|``), ``s = FP32_MAX``;
- ssign, QSGD: ``n = sqrt(sum') * 2**80``; ``inf`` when the true norm exceeds ``FP32_MAX``.

Power-of-two scaling is exact unless a scaled term underflows (a term below ``2**-94``
of a sum that overflowed: far below its rounding). QSGD then checks its top level: if
``S * (n_b / S)`` overflows (only ``n_b == FP32_MAX``, for some ``S``), ``n_b`` is lowered by
one ulp to ``PREV_MAX`` (within the sum's own rounding), so no decoded value is ``inf``. A
header still ``inf`` after this (a true norm beyond fp32, or an overflowed residual) is
for the compressor to refuse before anything is written (``gradpack.errors.RangeError``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .bitpack import words_for
from .treesum import Op

FP16_MAX = 65504.0
#: the largest finite float32, and the one below it
FP32_MAX = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]
PREV_MAX = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFE))[0]
#: norms below this are scaled by ``TINY_SCALE`` before the quantizer divides by them
TINY = 2.0**-64
TINY_SCALE = 2.0**64
#: norms at or above this are scaled by ``HUGE_SCALE`` (``S / n`` would be subnormal)
HUGE = 2.0**125
HUGE_SCALE = 2.0**-64
#: the rescue sums' term scales (:func:`rescue_scale`) and what undoes them on the result
RESCUE_ABS = 2.0**-32
RESCUE_SQUARE = 2.0**-80
UNDO_ABS = 2.0**32  # s = (sum' / d) * UNDO_ABS
UNDO_SQUARE = 2.0**80  # n = sqrt(sum') * UNDO_SQUARE


class Kind(IntEnum):
    FP32 = 0
    FP16 = 1
    BF16 = 2
    SIGN = 3
    SSIGN = 4
    QSGD = 5


@dataclass(frozen=True)
class Format:
    kind: Kind
    width: int
    levels: int = 0  # QSGD's S
    bucket: int = 0  # QSGD's B
    numel: int = 0  # d, where the code depends on it (sign's mean)
    maxnorm: bool = False  # QSGD's n_b is max |r| (p = inf), not the L2 norm

    @property
    def packed(self) -> bool:
        """Header plus a bit stream (sign, ssign, qsgd), not a plain float array."""
        return self.kind >= Kind.SIGN

    @property
    def stochastic(self) -> bool:
        return self.kind in (Kind.SSIGN, Kind.QSGD)

    @property
    def level_bits(self) -> int:
        return self.width - 1

    def segment(self, d: int) -> int:
        """Length of the segments the header statistics are summed over."""
        return min(self.bucket, d) if self.kind == Kind.QSGD else d

    def header_words(self, d: int) -> int:
        if self.kind == Kind.QSGD:
            return -(-d // self.bucket)
        return 1 if self.kind in (Kind.SIGN, Kind.SSIGN) else 0

    def stats_op(self) -> Op:
        if self.maxnorm:
            return Op.MAX
        return Op.ABS if self.kind == Kind.SIGN else Op.SQUARE

    def rescue_scale(self) -> float | None:
        """The power of two the rescue sum's terms are scaled by (module doc, "Overflow"),
        or ``None`` where a header cannot overflow (maxima, no header)."""
        if not self.packed or self.maxnorm:
            return None
        return RESCUE_ABS if self.kind == Kind.SIGN else RESCUE_SQUARE

    def body_bytes(self, d: int) -> int:
        """Bytes of header plus codes (before alignment padding)."""
        if self.packed:
            return 4 * (self.header_words(d) + words_for(d, self.width))
        return d * self.width // 8


def qsgd_format(levels: int, bucket: int, maxnorm: bool = False) -> Format:
    return Format(Kind.QSGD, 1 + levels.bit_length(), levels, bucket, maxnorm=maxnorm)
