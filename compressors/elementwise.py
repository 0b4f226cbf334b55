"""Shared plumbing of the compressors whose code is computed element by element
(:mod:`gradpack.kernels.elementwise`): the payload size is the format's header and
codes, and both directions go to the fused kernels.

Payload check (``check_finite``, before any decode writes): the fp32 header values
(:meth:`~gradpack.kernels.format.Format.header_words`: sign's scale, ssign's norm, QSGD's
per-bucket norms) must be finite and ``>= 0``; the values of the float codes (fp32, fp16,
bf16) must be finite (an encoder never writes inf or nan: fp16 saturates). QSGD's level
fields are not read by the check (a level above ``S`` decodes to at most
``(2**L - 1) / S`` times the bucket norm).

Range check (``check_finite``, before anything is written): a finite input whose header
does not fit float32 even with the overflow rescue (:mod:`gradpack.kernels.format`,
"Overflow": a 2-norm above ``3.4e38``, or a fused residual that overflowed) raises
:class:`~gradpack.errors.RangeError` naming the field and its value. The kernels compute
the header before their writing pass and hand it to the check in between, so the step
stays transactional. The check is a device flag (:func:`refuse`): recorded in the caller's
deferred checks (:mod:`.faults`), read together with the ``pending`` flags ``_encode`` is
given (``encode_settles_pending``: base's input finite check, one host read for both), or
read on its own.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch

from gradpack.errors import RangeError
from gradpack.kernels import elementwise as ew
from gradpack.kernels.format import FP32_MAX, Format, Kind

from . import checks, faults
from .base import Compressor

NOTHING_WRITTEN = "; nothing was encoded and no state was changed"


def refuse(bad: torch.Tensor, error: Callable[[str], Exception],
           pending: faults.Faults | None = None) -> None:
    """Raise ``error(suffix)`` if the device flag ``bad`` is set, before the caller writes
    anything: recorded in this thread's deferred checks (:func:`.faults.current`, then
    ``suffix`` is empty and the call goes on), or added to ``pending`` (unread flags of the
    same call, e.g. base's input finite check) and read with them in one host read, or
    read alone (one host read; a device synchronisation on a GPU)."""
    deferred = faults.current()
    if deferred is not None:
        deferred.flag(bad, lambda: error(""))
    elif pending is None:
        if bool(bad):  # the one host read (a device synchronisation on a GPU)
            raise error(NOTHING_WRITTEN)
        return
    else:
        pending.flag(bad, lambda: error(NOTHING_WRITTEN))
    settle(pending)


def settle(pending: faults.Faults | None) -> None:
    """Read the ``pending`` flags now (one host read; raises the first set), or hand them to
    this thread's deferred checks."""
    if pending is None:
        return
    deferred = faults.current()
    if deferred is not None:
        deferred.extend(pending)
        pending.clear()
    else:
        pending.raise_first()

_FLOATS = {Kind.FP32: torch.float32, Kind.FP16: torch.float16, Kind.BF16: torch.bfloat16}


class ElementwiseCompressor(Compressor):
    #: ``_encode`` takes ``pending`` (:class:`.faults.Faults` of unread checks of the same
    #: call) and reads it, with its own range check, before it writes anything
    encode_settles_pending = True

    @abstractmethod
    def format(self, numel: int) -> Format:
        """The code this compressor writes for ``numel`` elements."""

    def wire_bits(self, numel: int) -> int:
        fmt = self.format(self._check_numel(numel))
        return 32 * fmt.header_words(numel) + fmt.width * numel

    def _encode(self, fusion, x, state, seed, payload, backend,
                pending: faults.Faults | None = None) -> None:
        """Encode (base's contract); with ``check_finite`` the header is range-checked
        between the kernels' two passes, together with ``pending``."""
        fmt = self.format(x.numel())
        check = None
        if fmt.packed and self.check_finite:
            def check(head: ew.Header) -> None:
                refuse(head.bad(), lambda suffix: RangeError(
                    self._range_message(head, fusion) + suffix), pending)
        else:
            settle(pending)
        ew.encode(fmt, fusion, x, state, seed, payload, backend, check)

    def _range_message(self, head: ew.Header, fusion) -> str:
        """What :class:`RangeError` says: the field, its value (the true one where the rescue
        sum holds it), or that the residual itself overflowed."""
        found = head.first_bad()
        seg, value = found if found is not None else (0, float("nan"))
        fmt = head.fmt
        if fmt.kind == Kind.QSGD:
            field = f"bucket {seg}'s {'max-norm' if fmt.maxnorm else '2-norm'}"
        else:
            field = "the mean |r|" if fmt.kind == Kind.SIGN else "the 2-norm"
        if value == float("inf") or value != value:
            return (f"{self.spec}: {field} is {value}: the residual r overflows float32 "
                    f"(fusion {fusion})")
        return f"{self.spec}: {field} ({value:.6g}) exceeds float32's range ({FP32_MAX:.6g})"

    def _decode_sum(self, payloads, numel, seeds, out, scale, add, backend) -> None:
        ew.decode_sum(self.format(numel), payloads, numel, out, scale, add, backend)

    def _payload_fault(self, payloads: torch.Tensor, numel: int) -> str | None:
        fmt = self.format(numel)
        if fmt.kind in _FLOATS:
            dtype = _FLOATS[fmt.kind]
            nbytes = numel * torch.finfo(dtype).bits // 8
            bad = checks.first_bad(payloads[:, :nbytes].view(dtype), nonnegative=False)
            return None if bad is None else f"row {bad[0]}, value {bad[1]} is {bad[2]}"
        nh = fmt.header_words(numel)
        bad = checks.first_bad(payloads[:, : 4 * nh].view(torch.float32), nonnegative=True)
        if bad is None:
            return None
        row, word, value = bad
        if fmt.kind == Kind.QSGD:
            field = f"bucket {word} {'max-norm' if fmt.maxnorm else 'norm'}"
        else:
            field = "scale" if fmt.kind == Kind.SIGN else "norm"
        return f"row {row}, {field} is {value}"
