"""Uncompressed baselines: ``identity`` (fp32, 32 bits per element) and the
half-precision casts ``fp16`` / ``bf16`` (16 bits, round to nearest even; fp16
saturates at +-65504 instead of overflowing to inf)."""

from __future__ import annotations

from gradpack.kernels.format import Format, Kind

from .elementwise import ElementwiseCompressor
from .spec import no_args, register


class _Float(ElementwiseCompressor):
    kind = Kind.FP32
    width = 32
    unit_roundoff = 0.0

    @classmethod
    def from_args(cls, args, **kw):
        no_args(args, cls.name)
        return cls(**kw)

    def format(self, numel: int) -> Format:
        return Format(self.kind, self.width)

    def alpha(self, numel: int) -> float:
        """``1 - u^2`` with ``u`` the unit roundoff: holds for inputs in the normal range."""
        return 1.0 - self.unit_roundoff**2


@register("identity")
class Identity(_Float):
    unbiased = True

    def omega(self, numel: int) -> float:
        return 0.0


@register("fp16")
class Float16(_Float):
    kind, width, unit_roundoff = Kind.FP16, 16, 2.0**-11


@register("bf16")
class BFloat16(_Float):
    kind, width, unit_roundoff = Kind.BF16, 16, 2.0**-8
