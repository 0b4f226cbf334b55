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
maximum) ``S / n_b`` would overflow, so every backend scales first: with ``t = TINY_SCALE``
if ``n_b < TINY`` else ``1``, ``a = (|r| t) * (S / (n_b t))`` (ssign likewise:
``1/2 + (r t) * (0.5 / (n t))``); multiplying by a power of two is exact, so ``t = 1``
changes no bit. Header sums use :mod:`.treesum`'s fixed order; every
division and square root is correctly rounded; every backend performs the same fp32
operations in the same order, without contraction into fused multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .bitpack import words_for
from .treesum import Op

FP16_MAX = 65504.0
#: norms below this are scaled by ``TINY_SCALE`` before the quantizer divides by them
TINY = 2.0**-64
TINY_SCALE = 2.0**64


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

    def body_bytes(self, d: int) -> int:
        """Bytes of header plus codes (before alignment padding)."""
        if self.packed:
            return 4 * (self.header_words(d) + words_for(d, self.width))
        return d * self.width // 8


def qsgd_format(levels: int, bucket: int, maxnorm: bool = False) -> Format:
    return Format(Kind.QSGD, 1 + levels.bit_length(), levels, bucket, maxnorm=maxnorm)
