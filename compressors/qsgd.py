"""QSGD (Alistarh et al. 2017; seed 000): ``qsgd:S[:B]``.

Each bucket of ``B`` consecutive elements (default ``B = 512``, the QSGD paper's
bucket size) is sent as its fp32 L2 norm ``n_b`` and, per element, a sign bit and a
level ``l`` in ``0..S`` of ``ceil(log2(S + 1))`` bits, rounded stochastically so that
``E[l] = S |x_i| / n_b``: unbiased, with ``omega = min(B / S^2, sqrt(B) / S)``.
Wire: ``ceil(d / B) * 32 + d * (1 + ceil(log2(S + 1)))`` bits.
"""

from __future__ import annotations

import math

from gradpack.kernels import elementwise as ew

from .elementwise import ElementwiseCompressor
from .spec import parse_int, register

DEFAULT_BUCKET = 512
MAX_LEVELS = 2**24 - 1  # levels stay exact in fp32


@register("qsgd")
class QSGD(ElementwiseCompressor):
    unbiased = True
    random = True

    def __init__(self, levels: int, bucket: int = DEFAULT_BUCKET, **kw):
        super().__init__(**kw)
        if not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"qsgd: S (levels) must be in [1, {MAX_LEVELS}], got {levels}")
        if bucket < 1:
            raise ValueError(f"qsgd: B (bucket size) must be >= 1, got {bucket}")
        self.levels = levels
        self.bucket = bucket

    @classmethod
    def from_args(cls, args, **kw):
        spec = ":".join(["qsgd", *args])
        if not 1 <= len(args) <= 2:
            raise ValueError(f"qsgd spec is qsgd:S[:B], got {spec!r}")
        levels = parse_int(args[0], "qsgd S (levels)", spec)
        bucket = parse_int(args[1], "qsgd B (bucket size)", spec) if len(args) == 2 else None
        return cls(levels, DEFAULT_BUCKET if bucket is None else bucket, **kw)

    @property
    def spec(self) -> str:
        return f"qsgd:{self.levels}:{self.bucket}"

    def format(self, numel: int) -> ew.Format:
        return ew.qsgd_format(self.levels, self.bucket)

    def omega(self, numel: int) -> float:
        b = min(self.bucket, numel)
        return min(b / self.levels**2, math.sqrt(b) / self.levels)
