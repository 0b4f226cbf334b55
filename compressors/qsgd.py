"""QSGD (Alistarh et al. 2017; seed 000): ``qsgd:S[:B]``, and its max-norm variant
``qsgd:S[:B]:inf`` (seed 002's p-norm quantization at ``p = inf``, DIANA's and DORE's).

Each bucket of ``B`` consecutive elements (default ``B = 512``, the QSGD paper's
bucket size) is sent as its fp32 norm ``n_b`` (L2, or ``max |x_i|`` with ``:inf``) and,
per element, a sign bit and a level ``l`` in ``0..S`` of ``ceil(log2(S + 1))`` bits,
rounded stochastically so that ``E[l] = S |x_i| / n_b``: unbiased. Element ``i``'s
variance is ``(n_b/S)^2 p(1-p)`` with ``p`` the fractional part of ``S |x_i| / n_b``, at
most ``min(n_b^2 / (4 S^2), n_b |x_i| / S)``; with ``n_b <= ||x_b||_2`` (both norms) and
``||x_b||_1 <= sqrt(B) ||x_b||_2`` that gives ``omega = min(B / S^2, sqrt(B) / S)`` for
both (QSGD's bound). The max-norm's variance is far below that bound in practice
(``n_b ||x_b||_1 / ||x_b||^2`` is about ``0.8 sqrt(2 ln B)`` for Gaussian buckets, not
``sqrt(B)``), and it zeroes most small coordinates: ``qsgd:1:B:inf`` is the ternary
``{-n_b, 0, n_b}`` code seed 002's experiments use.
Wire: ``ceil(d / B) * 32 + d * (1 + ceil(log2(S + 1)))`` bits.
"""

from __future__ import annotations

import math

from gradpack.kernels.format import Format, qsgd_format

from .elementwise import ElementwiseCompressor
from .spec import parse_int, register

DEFAULT_BUCKET = 512
MAX_LEVELS = 2**24 - 1  # levels stay exact in fp32


@register("qsgd")
class QSGD(ElementwiseCompressor):
    unbiased = True
    random = True

    def __init__(self, levels: int, bucket: int = DEFAULT_BUCKET, *, maxnorm: bool = False,
                 **kw):
        super().__init__(**kw)
        for what, value in (("S (levels)", levels), ("B (bucket size)", bucket)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"qsgd: {what} must be an int, got {value!r}")
        if not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"qsgd: S (levels) must be in [1, {MAX_LEVELS}], got {levels}")
        if bucket < 1:
            raise ValueError(f"qsgd: B (bucket size) must be >= 1, got {bucket}")
        self.levels = levels
        self.bucket = bucket
        self.maxnorm = bool(maxnorm)

    @classmethod
    def from_args(cls, args, **kw):
        spec = ":".join(["qsgd", *args])
        maxnorm = len(args) > 1 and args[-1] == "inf"
        if maxnorm:
            args = args[:-1]
        if not 1 <= len(args) <= 2:
            raise ValueError(f"qsgd spec is qsgd:S[:B][:inf], got {spec!r}")
        levels = parse_int(args[0], "qsgd S (levels)", spec)
        bucket = parse_int(args[1], "qsgd B (bucket size)", spec) if len(args) == 2 else None
        return cls(levels, DEFAULT_BUCKET if bucket is None else bucket, maxnorm=maxnorm, **kw)

    @property
    def spec(self) -> str:
        return f"qsgd:{self.levels}:{self.bucket}" + (":inf" if self.maxnorm else "")

    def format(self, numel: int) -> Format:
        return qsgd_format(self.levels, self.bucket, self.maxnorm)

    def omega(self, numel: int) -> float:
        b = min(self.bucket, numel)
        return min(b / self.levels**2, math.sqrt(b) / self.levels)
