"""Top-K sparsification (seeds 003, 004): ``topk:R`` and ``topk:R:approx``.

Keeps the ``K`` coordinates of largest ``|x|`` (ties: lowest index), a deterministic,
biased, contractive compressor: ``||C(x) - x||^2 <= (1 - K/d) ||x||^2``, ``alpha = K/d``.
``approx`` selects by a sampled threshold corrected by counting (the DGC idea) and keeps
the same guarantee (see :mod:`gradpack.kernels.topk` for how far it can be from exact).

Decoding checks every row's ``K`` index fields (in ``[0, d)``, strictly increasing) before
anything is written, and with ``check_finite`` that its ``K`` values are finite; either
failure is a :class:`~gradpack.errors.CorruptPayloadError` naming the row.

Wire: ``K`` fp32 values and ``K`` indices of ``ceil(log2 d)`` bits (none when ``d == 1``):
``wire_bits = 32 K + K ceil(log2 d)``.
"""

from __future__ import annotations

from gradpack.errors import CorruptPayloadError
from gradpack.kernels import topk as kt

from .sparse import Sparsifier, parse_count
from .spec import register


@register("topk")
class TopK(Sparsifier):
    def __init__(self, ratio: float | None = None, count: int | None = None, *,
                 approx: bool = False, **kw):
        super().__init__(ratio, count, **kw)
        self.approx = bool(approx)

    @classmethod
    def from_args(cls, args, **kw):
        spec = ":".join(["topk", *args])
        if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1] != "approx"):
            raise ValueError(f"topk spec is topk:R or topk:R:approx, got {spec!r}")
        ratio, count = parse_count(args[0], spec)
        return cls(ratio, count, approx=len(args) == 2, **kw)

    @property
    def spec(self) -> str:
        return f"topk:{self._spec_args()}" + (":approx" if self.approx else "")

    def wire_bits(self, numel: int) -> int:
        k = self.k(numel)
        return 32 * k + k * kt.index_width(numel)

    def alpha(self, numel: int) -> float:
        return self.k(numel) / self._check_numel(numel)

    def _encode(self, fusion, x, state, seed, payload, backend) -> None:
        kt.encode(self.approx, self.k(x.numel()), fusion, x, state, payload, backend,
                  self._scratch)

    def _payload_fault(self, payloads, numel):
        return self._value_fault(payloads, numel)

    def _decode_sum(self, payloads, numel, seeds, out, scale, add, backend) -> None:
        """The kernels validate every row's index fields before they write (always, not
        only with ``check_finite``); their ``ValueError`` is re-raised typed."""
        try:
            kt.decode_sum(self.k(numel), payloads, numel, out, scale, add, backend, self.spec)
        except CorruptPayloadError:
            raise
        except ValueError as e:  # kernels/topk.py check_indices, and its native twin
            raise CorruptPayloadError(str(e)) from e
