"""Sign compression (seed 004).

``sign``: ``C(x) = (||x||_1 / d) sign(x)`` with ``sign(0) = +1``; biased and contractive:
``||C(x) - x||^2 = ||x||^2 - ||x||_1^2 / d <= (1 - 1/d) ||x||^2``. Wire: d bits + one fp32.

``ssign``: stochastic sign, ``C(x)_i = ||x||_2`` with probability ``1/2 + x_i / (2 ||x||_2)``,
else ``-||x||_2``; unbiased with ``omega = d - 1``. Wire: d bits + one fp32.
"""

from __future__ import annotations

from gradpack.kernels.format import Format, Kind

from .elementwise import ElementwiseCompressor
from .spec import no_args, register


@register("sign")
class Sign(ElementwiseCompressor):
    @classmethod
    def from_args(cls, args, **kw):
        no_args(args, cls.name)
        return cls(**kw)

    def format(self, numel: int) -> Format:
        return Format(Kind.SIGN, 1)

    def alpha(self, numel: int) -> float:
        return 1.0 / numel


@register("ssign")
class StochasticSign(ElementwiseCompressor):
    unbiased = True
    random = True

    @classmethod
    def from_args(cls, args, **kw):
        no_args(args, cls.name)
        return cls(**kw)

    def format(self, numel: int) -> Format:
        return Format(Kind.SSIGN, 1)

    def omega(self, numel: int) -> float:
        return float(numel - 1)
