"""Shared plumbing of the compressors whose code is computed element by element
(:mod:`gradpack.kernels.elementwise`): the payload size is the format's header and
codes, and both directions go to the fused kernels."""

from __future__ import annotations

from abc import abstractmethod

from gradpack.kernels import elementwise as ew
from gradpack.kernels.format import Format

from .base import Compressor


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
