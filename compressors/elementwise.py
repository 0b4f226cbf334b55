"""Shared plumbing of the compressors whose code is computed element by element
(:mod:`gradpack.kernels.elementwise`): the payload size is the format's header and
codes, and both directions go to the fused kernels.

Payload check (``check_finite``, before any decode writes): the fp32 header values
(:meth:`~gradpack.kernels.format.Format.header_words`: sign's scale, ssign's norm, QSGD's
per-bucket norms) must be finite and ``>= 0``; the values of the float codes (fp32, fp16,
bf16) must be finite (an encoder never writes inf or nan: fp16 saturates). QSGD's level
fields are not read by the check (a level above ``S`` decodes to at most
``(2**L - 1) / S`` times the bucket norm).
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from gradpack.kernels import elementwise as ew
from gradpack.kernels.format import Format, Kind

from . import checks
from .base import Compressor

_FLOATS = {Kind.FP32: torch.float32, Kind.FP16: torch.float16, Kind.BF16: torch.bfloat16}


class ElementwiseCompressor(Compressor):
    @abstractmethod
    def format(self, numel: int) -> Format:
        """The code this compressor writes for ``numel`` elements."""

    def wire_bits(self, numel: int) -> int:
        fmt = self.format(self._check_numel(numel))
        return 32 * fmt.header_words(numel) + fmt.width * numel

    def _encode(self, fusion, x, state, seed, payload, backend) -> None:
        ew.encode(self.format(x.numel()), fusion, x, state, seed, payload, backend)

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
