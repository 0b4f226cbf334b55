"""Random-K sparsification with shared-seed indices (seed 004): ``randk:R`` and
``randk:R:biased``.

Sends ``K`` coordinates forming a uniformly random ``K``-subset chosen from the seed
(each coordinate with probability ``K/d``); the receiver regenerates the subset from the
same seed, so only values travel: ``wire_bits = 32 K``.

- ``randk:R``: values scaled by ``d/K``: unbiased, ``omega = d/K - 1``.
- ``randk:R:biased``: unscaled: contractive in expectation, ``alpha = K/d``
  (``E||C(x) - x||^2 = (1 - K/d)||x||^2``), the variant error feedback wants.
"""

from __future__ import annotations

from gradpack.kernels import randk as kr

from .sparse import Sparsifier, parse_count
from .spec import register


@register("randk")
class RandK(Sparsifier):
    random = True

    def __init__(self, ratio: float | None = None, count: int | None = None, *,
                 biased: bool = False, **kw):
        super().__init__(ratio, count, **kw)
        self.biased = bool(biased)
        self.unbiased = not self.biased

    @classmethod
    def from_args(cls, args, **kw):
        spec = ":".join(["randk", *args])
        if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1] != "biased"):
            raise ValueError(f"randk spec is randk:R or randk:R:biased, got {spec!r}")
        ratio, count = parse_count(args[0], spec)
        return cls(ratio, count, biased=len(args) == 2, **kw)

    @property
    def spec(self) -> str:
        return f"randk:{self._spec_args()}" + (":biased" if self.biased else "")

    def wire_bits(self, numel: int) -> int:
        return 32 * self.k(numel)

    def omega(self, numel: int) -> float:
        if self.biased:
            return super().omega(numel)
        return self._check_numel(numel) / self.k(numel) - 1.0

    def alpha(self, numel: int) -> float:
        if not self.biased:
            return super().alpha(numel)
        return self.k(numel) / self._check_numel(numel)

    def _encode(self, fusion, x, state, seed, payload, backend) -> None:
        kr.encode(self.unbiased, self.k(x.numel()), fusion, x, state, seed, payload, backend)

    def _decode_sum(self, payloads, numel, seeds, out, scale, add, backend) -> None:
        kr.decode_sum(self.k(numel), payloads, numel, seeds, out, scale, add, backend)
