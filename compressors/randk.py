"""Random-K sparsification with shared-seed indices (seed 004): ``randk:R``,
``randk:R:biased`` and ``randk:R:CODE``.

Sends ``K`` coordinates forming a uniformly random ``K``-subset chosen from the seed
(each coordinate with probability ``K/d``); the receiver regenerates the subset from the
same seed, so only values travel: ``wire_bits = 32 K``.

- ``randk:R``: values scaled by ``d/K``: unbiased, ``omega = d/K - 1``.
- ``randk:R:biased``: unscaled: contractive in expectation, ``alpha = K/d``
  (``E||C(x) - x||^2 = (1 - K/d)||x||^2``), the variant error feedback wants.
- ``randk:R:CODE``: the ``K`` scaled values are sent in an unbiased elementwise code
  instead of fp32, e.g. ``randk:0.5:qsgd:1:512:inf`` (seed 002's random sparsification
  composed with its p-norm quantization: about 1 bit per coordinate of ``d``). The code's
  randomness is keyed by ``derive_seed(seed, VALUE_STREAM)``, independent of the index
  stream. Unbiased, with ``omega = (1 + omega_Q(K)) d/K - 1``: ``E||Q(R(x)) - x||^2 =
  E||Q(R(x)) - R(x)||^2 + E||R(x) - x||^2 <= omega_Q (d/K) ||x||^2 + (d/K - 1)||x||^2``.
  Wire: the code's bits for ``K`` elements.

Decoding with ``check_finite`` checks each row's values first (fp32: finite; a value code:
its own header and value check, :mod:`.elementwise`) and raises
:class:`~gradpack.errors.CorruptPayloadError` naming the row before anything is written.

Encoding with ``check_finite`` checks the ``K`` values ``r_i * d/K`` (they overflow fp32
for ``|r_i| > FP32_MAX K/d``) before anything is written and raises
:class:`~gradpack.errors.RangeError` naming the coordinate; with a value code that flag is
read together with the code's own range check (:mod:`.elementwise`: one host read).
"""

from __future__ import annotations

import functools

import torch

from gradpack.errors import RangeError
from gradpack.kernels import randk as kr
from gradpack.kernels.format import FP32_MAX
from gradpack.kernels.fusion import PLAIN
from gradpack.kernels.philox import derive_seed

from . import faults
from .elementwise import NOTHING_WRITTEN, ElementwiseCompressor, refuse, settle
from .sparse import Sparsifier, parse_count
from .spec import from_spec, register

#: ``tag`` of :func:`~gradpack.kernels.philox.derive_seed` for the value code's randomness
VALUE_STREAM = 1


@register("randk")
class RandK(Sparsifier):
    random = True

    def __init__(self, ratio: float | None = None, count: int | None = None, *,
                 biased: bool = False, values: ElementwiseCompressor | None = None, **kw):
        super().__init__(ratio, count, **kw)
        if values is not None:
            if not isinstance(values, ElementwiseCompressor) or not values.unbiased:
                raise ValueError(f"randk: the value code must be an unbiased elementwise "
                                 f"compressor (qsgd:..., ssign, identity), got {values!r}")
            if biased:
                raise ValueError("randk: a value code needs the unbiased randk:R:CODE; "
                                 "randk:R:biased sends fp32 values")
        self.biased = bool(biased)
        self.unbiased = not self.biased
        self.values = values

    @classmethod
    def from_args(cls, args, **kw):
        spec = ":".join(["randk", *args])
        if not args or args[1:] == [""]:
            raise ValueError(f"randk spec is randk:R, randk:R:biased or randk:R:CODE, "
                             f"got {spec!r}")
        ratio, count = parse_count(args[0], spec)
        if args[1:] == ["biased"]:
            return cls(ratio, count, biased=True, **kw)
        values = from_spec(":".join(args[1:]), **kw) if len(args) > 1 else None
        return cls(ratio, count, values=values, **kw)

    @property
    def spec(self) -> str:
        tail = ":biased" if self.biased else f":{self.values.spec}" if self.values else ""
        return f"randk:{self._spec_args()}{tail}"

    def wire_bits(self, numel: int) -> int:
        k = self.k(numel)
        return 32 * k if self.values is None else self.values.wire_bits(k)

    def omega(self, numel: int) -> float:
        if self.biased:
            return super().omega(numel)
        k = self.k(numel)
        ratio = self._check_numel(numel) / k
        return ratio - 1.0 if self.values is None else (1.0 + self.values.omega(k)) * ratio - 1.0

    def alpha(self, numel: int) -> float:
        if not self.biased:
            return super().alpha(numel)
        return self.k(numel) / self._check_numel(numel)

    #: ``_encode`` reads base's ``pending`` checks with its own (:mod:`.elementwise`)
    encode_settles_pending = True

    def _encode(self, fusion, x, state, seed, payload, backend,
                pending: faults.Faults | None = None) -> None:
        d, k = x.numel(), self.k(x.numel())
        write = check = None
        if self.values is not None and self.check_finite and faults.current() is None:
            # the values' flag is read with the value code's header check (one host read)
            pending = pending if pending is not None else faults.Faults()
        if self.values is not None:
            code, vseed = self.values, derive_seed(seed, VALUE_STREAM)

            def write(vals, out):
                code._encode(PLAIN, vals, {}, vseed, out, backend, pending)
                c = torch.empty_like(vals)
                code._decode_sum(out[None], vals.numel(), [vseed], c, 1.0, False, backend)
                return c

        if self.check_finite:
            scale = kr.value_scale(d, k, self.unbiased)

            def check(vals, idx):
                lo, hi = torch.aminmax(vals)
                bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
                error = functools.partial(self._range_error, vals, idx, scale)
                if self.values is not None and pending is not None:
                    pending.flag(bad, lambda: error(NOTHING_WRITTEN))  # read by the code
                else:
                    refuse(bad, error, pending)
        else:
            settle(pending)
        try:
            kr.encode(self.unbiased, k, fusion, x, state, seed, payload, backend, write, check)
        except RangeError as e:
            if str(e).startswith(f"{self.spec}:"):
                raise
            raise RangeError(f"{self.spec}: value code {e}") from None

    def _range_error(self, vals, idx, scale: float, suffix: str) -> RangeError:
        """A value ``r_i * d/K`` that is not finite: which coordinate, and the bound."""
        j = int(torch.nonzero(~torch.isfinite(vals)).view(-1)[0])
        what = f"r_i * d/K (d/K = {scale:.6g}) exceeds float32's range: |r_i| > " \
            f"{FP32_MAX / scale:.6g}" if scale != 1.0 else "r_i is not finite (the residual " \
            "overflowed)"
        return RangeError(f"{self.spec}: coordinate {int(idx[j])}'s value {what}{suffix}")

    def _payload_fault(self, payloads, numel):
        """The fp32 values, or the value code's header and values (for ``K`` elements)."""
        if self.values is None:
            return self._value_fault(payloads, numel)
        fault = self.values._payload_fault(payloads, self.k(numel))
        return None if fault is None else f"{fault} (value code {self.values.spec})"

    def _decode_sum(self, payloads, numel, seeds, out, scale, add, backend) -> None:
        k, read = self.k(numel), None
        if self.values is not None:
            vals = torch.empty(k, dtype=torch.float32, device=payloads.device)  # one for all rows

            def read(row, seed):
                self.values._decode_sum(row[None], k, [derive_seed(seed, VALUE_STREAM)], vals,
                                        1.0, False, backend)
                return vals

        kr.decode_sum(k, payloads, numel, seeds, out, scale, add, backend, read)
