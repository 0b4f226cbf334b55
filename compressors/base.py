"""The compressor contract (DESIGN.md, "Contracts").

A compressor turns a dense float tensor ``x`` of ``d = x.numel()`` elements into a
1-D ``torch.uint8`` payload whose length depends only on ``(spec, d)``, and back::

    payload = c.encode(x, seed=s)                  # len == c.payload_bytes(d)
    y = c.decode(payload, d, seed=s)               # C(x), dense
    y = c.decode_sum(payloads, d, seeds=seeds)     # sum_i C(x_i), payloads: [n, payload_bytes]
    payload = c.step(fusion, grad, state, seed=s)  # fused error-feedback worker step

Payload layout: fp32 header values (scales, norms), then one packed little-endian bit
stream (:mod:`gradpack.kernels.bitpack`), then zero padding to a multiple of 8 bytes
(``payload_bytes(d) - ceil(wire_bits(d) / 8) < 8``).

Policies, the same for every compressor:

- inputs may be float32, float16 or bfloat16, contiguous or not, torch tensors or any
  DLPack array (CuPy, NumPy), taken without a copy; decode returns
  ``dtype`` (default float32) unless ``out`` is given;
- an empty tensor, a payload of the wrong length, dtype or device, or a bad ``out``
  raises ``ValueError`` before anything is written;
- non-finite input (inf or nan in ``x`` or ``grad``) raises ``ValueError`` before any
  payload byte or state element is written (``check_finite=False`` skips the check and
  its device synchronisation; the payload is then unspecified);
- randomness comes only from ``seed`` (Philox, counter = element index): the same
  ``(x, seed)`` gives the same payload on every backend and every rank.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from gradpack.kernels.backend import check_backend, resolve
from gradpack.kernels.fusion import PLAIN, Fusion, check_state
from gradpack.kernels.philox import check_seed

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALIGN = 8  # payload bytes are a multiple of this


def aligned_bytes(bits: int) -> int:
    """Bytes of a payload carrying ``bits`` bits: ceil(bits / 8) rounded up to ``ALIGN``."""
    return -(-bits // (8 * ALIGN)) * ALIGN


def _all_finite(x: torch.Tensor) -> bool:
    """No inf or nan in ``x``: nan propagates into min and max, +-inf shows in them (one
    reduction pass, an order of magnitude cheaper than ``isfinite(x).all()`` on CPU)."""
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


class Compressor(ABC):
    """Base class: argument checking and allocation; subclasses implement ``_encode`` and
    ``_decode_sum`` for both backends."""

    #: spec family name (``from_spec`` key)
    name: str = ""
    #: E[C(x)] = x
    unbiased: bool = False
    #: uses the seed (so decoding a Random-K payload, for instance, needs the same seed)
    random: bool = False

    def __init__(self, *, backend: str = "auto", check_finite: bool = True):
        self.backend = check_backend(backend)
        self.check_finite = bool(check_finite)

    # -- sizes --------------------------------------------------------------------------
    @abstractmethod
    def wire_bits(self, numel: int) -> int:
        """Exact bits of information in the payload for ``numel`` elements."""

    def payload_bytes(self, numel: int) -> int:
        """Bytes actually sent: ``ceil(wire_bits / 8)`` plus < 8 bytes of alignment."""
        return aligned_bytes(self.wire_bits(self._check_numel(numel)))

    def omega(self, numel: int) -> float:
        """Variance parameter: E||C(x) - x||^2 <= omega ||x||^2 (unbiased compressors)."""
        raise ValueError(f"{self.spec!r} is not an unbiased compressor: it has no omega")

    def alpha(self, numel: int) -> float:
        """Contraction parameter: E||C(x) - x||^2 <= (1 - alpha) ||x||^2."""
        raise ValueError(f"{self.spec!r} is not a contractive compressor: it has no alpha")

    @property
    def spec(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, backend={self.backend!r})"

    # -- public API -----------------------------------------------------------------------
    def encode(self, x: torch.Tensor, *, seed: int = 0, out: torch.Tensor | None = None):
        return self.step(PLAIN, x, {}, seed=seed, out=out)

    def step(
        self,
        fusion: Fusion,
        grad: torch.Tensor,
        state: dict[str, torch.Tensor],
        *,
        seed: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fused worker step (see :mod:`gradpack.kernels.fusion`): updates ``state`` in place
        and returns the payload of ``C(r)``."""
        check_seed(seed)
        x = self._check_input(grad)
        check_state(fusion, x, state)
        d = x.numel()
        payload = self._payload_out(out, d, x.device)
        if self.check_finite and not _all_finite(x):
            raise ValueError(
                f"{self.spec}: input has non-finite values (inf/nan); nothing was encoded "
                "and no state was changed"
            )
        self._encode(fusion, x, state, seed, payload, resolve(self.backend, x.device))
        return payload

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        seed: int = 0,
        out: torch.Tensor | None = None,
        add: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        self._check_payload_dims(payload, 1)
        return self.decode_sum(payload[None], numel, seeds=[seed], out=out, add=add, dtype=dtype)

    def decode_sum(
        self,
        payloads: torch.Tensor,
        numel: int,
        *,
        seeds: Sequence[int] | None = None,
        out: torch.Tensor | None = None,
        scale: float = 1.0,
        add: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``out (+)= scale * sum_i C_i`` over the rows of ``payloads`` ([n, payload_bytes]),
        accumulated in fp32 in row order, without materialising n dense tensors."""
        self._check_numel(numel)
        self._check_payload_dims(payloads, 2)
        n, nbytes = payloads.shape
        if nbytes != self.payload_bytes(numel):
            raise ValueError(
                f"{self.spec}: payload has {nbytes} bytes, {numel} elements need "
                f"{self.payload_bytes(numel)}"
            )
        if n < 1:
            raise ValueError(f"{self.spec}: no payloads to decode")
        seeds = [0] * n if seeds is None else [check_seed(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"{self.spec}: {n} payloads but {len(seeds)} seeds")
        if not payloads.is_contiguous():
            payloads = payloads.contiguous()
        out = self._dense_out(out, numel, dtype, payloads.device, add)
        self._decode_sum(payloads, numel, seeds, out, float(scale), add,
                         resolve(self.backend, payloads.device))
        return out

    # -- for subclasses -------------------------------------------------------------------
    @abstractmethod
    def _encode(self, fusion, x, state, seed, payload, backend) -> None:
        """Write the payload of C(prologue(x)) and apply the epilogue to ``state``."""

    @abstractmethod
    def _decode_sum(self, payloads, numel, seeds, out, scale, add, backend) -> None:
        """``out (+)= scale * sum_i decode(payloads[i])``; ``out`` is contiguous."""

    # -- checks ---------------------------------------------------------------------------
    def _check_numel(self, numel: int) -> int:
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 1:
            raise ValueError(f"{self.spec}: numel must be a positive int, got {numel!r}")
        if numel >= 2**31:
            raise ValueError(f"{self.spec}: at most 2**31 - 1 elements per call, got {numel}")
        return numel

    def _check_input(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) and hasattr(x, "__dlpack__"):
            x = torch.from_dlpack(x)  # CuPy, NumPy, JAX arrays: zero-copy
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"{self.spec}: expected a torch.Tensor or a DLPack array, got {type(x).__name__}"
            )
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{self.spec}: input dtype must be one of {FLOAT_DTYPES}, got {x.dtype}"
            )
        if x.numel() == 0:
            raise ValueError(f"{self.spec}: cannot encode an empty tensor")
        self._check_numel(x.numel())
        return x.reshape(-1) if x.is_contiguous() else x.contiguous().view(-1)

    def _payload_out(self, out, numel, device) -> torch.Tensor:
        nbytes = self.payload_bytes(numel)
        if out is None:
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
        self._check_payload_dims(out, 1)
        if out.numel() != nbytes or not out.is_contiguous() or out.device != torch.device(device):
            raise ValueError(
                f"{self.spec}: out must be a contiguous uint8 tensor of {nbytes} bytes on {device}"
            )
        return out

    def _check_payload_dims(self, payload, ndim) -> None:
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
            got = payload.dtype if isinstance(payload, torch.Tensor) else type(payload).__name__
            raise ValueError(f"{self.spec}: payload must be a torch.uint8 tensor, got {got}")
        if payload.dim() != ndim:
            raise ValueError(f"{self.spec}: payload must have {ndim} dims, got {payload.dim()}")

    def _dense_out(self, out, numel, dtype, device, add) -> torch.Tensor:
        if out is None:
            if add:
                raise ValueError(f"{self.spec}: add=True needs an out tensor to add into")
            if dtype not in FLOAT_DTYPES:
                raise ValueError(f"{self.spec}: dtype must be one of {FLOAT_DTYPES}, got {dtype}")
            return torch.empty(numel, dtype=dtype, device=device)
        if out.dtype not in FLOAT_DTYPES or out.numel() != numel or out.device != device:
            raise ValueError(
                f"{self.spec}: out must be a float tensor of {numel} elements on {device}, "
                f"got {out.dtype} with {out.numel()} on {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError(f"{self.spec}: out must be contiguous")
        return out
