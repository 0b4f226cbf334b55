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

Policies, the same for every compressor (README, "Policies", says the same):

- inputs may be float32, float16 or bfloat16, contiguous or not, torch tensors or any
  DLPack array (CuPy, NumPy), taken without a copy; decode returns
  ``dtype`` (default float32) unless ``out`` is given;
- every argument is checked before anything is written, and a bad one raises
  ``ValueError`` naming it: an empty, sparse, meta or complex tensor, a payload of the
  wrong length, dtype or device, a non-int ``numel``/``seed``/``seeds``, a ``scale`` that
  is not a real number finite in float32, a state tensor or ``out`` that cannot be written
  in place (wrong dtype, size, device, layout, an inference tensor, memory shared with
  another argument, not a torch tensor). ``TypeError`` only where Python itself raises
  it (an unknown keyword, a missing argument);
- alignment: payload bytes are read as 4- and 8-byte words, so a payload to decode whose
  first byte is not 8-byte aligned (a view at an odd storage offset) is copied to an
  aligned buffer first (it is an input); an ``out=`` payload buffer that is not 8-byte
  aligned, or a decode ``out`` not aligned to its element size, is a ``ValueError``
  (nothing is written);
- ``step`` is transactional: every check above, and the finite check below, runs before
  the first kernel, so a step that raises leaves every state tensor and ``out`` as they were;
- non-finite input (inf or nan in ``x`` or ``grad``) raises
  :class:`~gradpack.errors.NonFiniteError` (a ``ValueError``) before any payload byte or
  state element is written;
- decoding never trusts a payload: a header value (sign's scale, ssign's norm, QSGD's
  bucket norms) that is nan, inf or negative, or a value (fp32/fp16/bf16 codes, Top-K and
  Random-K values) that is nan or inf, raises :class:`~gradpack.errors.CorruptPayloadError`
  naming the row and the field before anything is written to ``out``; Top-K's index fields
  are always checked (bounds, strictly increasing);
- ``check_finite=False`` skips the input finite check and the payload value/header check,
  and their one host read each (a device synchronisation on a GPU); the payload (or the
  decoded sum) is then unspecified for such inputs, but never written outside ``out``;
- deferred checks (:mod:`.faults`): inside ``Faults().deferred()`` the same checks are
  recorded as device flags instead of read, the call completes (writing unspecified values
  for bad inputs, never outside ``out``), and ``Faults.raise_first()`` raises the same
  error later with one host read for any number of calls; the caller undoes what the calls
  wrote (the DDP hook's per-step transaction);
- randomness comes only from ``seed`` (Philox, counter = element index): the same
  ``(x, seed)`` gives the same payload on every backend and every rank.
"""

from __future__ import annotations

import math
import numbers
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from gradpack.errors import CorruptPayloadError, NonFiniteError
from gradpack.kernels.backend import check_backend, resolve
from gradpack.kernels.fusion import PLAIN, Fusion, check_state

from . import checks, faults

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALIGN = 8  # payload bytes are a multiple of this


def aligned_bytes(bits: int) -> int:
    """Bytes of a payload carrying ``bits`` bits: ceil(bits / 8) rounded up to ``ALIGN``."""
    return -(-bits // (8 * ALIGN)) * ALIGN


def _nonfinite(x: torch.Tensor) -> torch.Tensor:
    """Device flag: ``x`` holds inf or nan (nan propagates into min and max, +-inf shows in
    them: one reduction pass, an order of magnitude cheaper than ``isfinite(x).all()`` on
    CPU)."""
    lo, hi = torch.aminmax(x)
    return ~(torch.isfinite(lo) & torch.isfinite(hi))


def _all_finite(x: torch.Tensor) -> bool:
    # the one host read of an immediate encode (a device sync on a GPU): a non-finite input
    # must raise before any state is written; faults.deferred() records the flag instead
    return not bool(_nonfinite(x))


class Compressor(ABC):
    """Base class: argument checking and allocation; subclasses implement ``_encode`` and
    ``_decode_sum`` for both backends."""

    #: spec family name (``from_spec`` key)
    name: str = ""
    #: E[C(x)] = x
    unbiased: bool = False
    #: uses the seed (so decoding a Random-K payload, for instance, needs the same seed)
    random: bool = False
    #: ``_encode`` accepts ``pending`` (:class:`.faults.Faults`: base's unread input finite
    #: flag) and reads it with its own checks before its first write (one host read)
    encode_settles_pending: bool = False

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
        and returns the payload of ``C(r)``. Every check runs before the first kernel: a
        step that raises has written nothing (module doc, "Policies")."""
        seed = checks.seed(seed, self.spec)
        x = self._check_input(grad)
        self._check_state(fusion, x, state)
        payload = self._payload_out(out, x.numel(), x.device)
        for name in fusion.state_names():
            if checks.overlap(payload, state[name]):
                raise ValueError(f"{self.spec}: out shares memory with state {name!r}")
        if checks.overlap(payload, x):
            raise ValueError(f"{self.spec}: out shares memory with the input")
        backend = resolve(self.backend, x.device)
        pending = None
        if self.check_finite:
            deferred = faults.current()
            if deferred is not None:
                deferred.flag(_nonfinite(x), lambda: NonFiniteError(
                    f"{self.spec}: input has non-finite values (inf/nan)"))
            elif self.encode_settles_pending:
                # read by _encode together with its own range check, before it writes
                pending = faults.Faults()
                pending.flag(_nonfinite(x), lambda: NonFiniteError(
                    f"{self.spec}: input has non-finite values (inf/nan); nothing was encoded "
                    "and no state was changed"))
            elif not _all_finite(x):
                raise NonFiniteError(
                    f"{self.spec}: input has non-finite values (inf/nan); nothing was encoded "
                    "and no state was changed"
                )
        with torch.no_grad():  # state may require grad; its update is not differentiable
            if pending is None:
                self._encode(fusion, x, state, seed, payload, backend)
            else:
                self._encode(fusion, x, state, seed, payload, backend, pending)
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
        accumulated in fp32 in row order, without materialising n dense tensors. Every row
        is checked (length, and with ``check_finite`` its header and values) before
        anything is written to ``out``."""
        numel = self._check_numel(numel)
        self._check_payload_dims(payloads, 2)
        n, nbytes = payloads.shape
        if nbytes != self.payload_bytes(numel):
            raise ValueError(
                f"{self.spec}: payload has {nbytes} bytes, {numel} elements need "
                f"{self.payload_bytes(numel)}"
            )
        if n < 1:
            raise ValueError(f"{self.spec}: no payloads to decode")
        seeds = checks.seed_list(seeds, n, self.spec)
        scale = checks.fp32_scalar(scale, "scale", self.spec)
        add = bool(add)
        backend = resolve(self.backend, payloads.device)
        out = self._dense_out(out, numel, dtype, payloads.device, add)
        if not payloads.is_contiguous() or not checks.aligned(payloads, ALIGN):
            payloads = payloads.clone(memory_format=torch.contiguous_format)  # an input
        if checks.overlap(out, payloads):
            raise ValueError(f"{self.spec}: out shares memory with the payloads")
        if self.check_finite:
            self._check_payloads(payloads, numel)
        with torch.no_grad():
            self._decode_sum(payloads, numel, seeds, out, scale, add, backend)
        return out

    def _check_payloads(self, payloads: torch.Tensor, numel: int) -> None:
        """:meth:`_payload_fault` at once (one host read), or as a flag of the deferred
        checks (:mod:`.faults`: its :func:`~.checks.first_bad` calls record, not read)."""
        deferred = faults.current()
        if deferred is None:
            fault = self._payload_fault(payloads, numel)
            if fault is not None:
                raise CorruptPayloadError(
                    f"{self.spec}: corrupt payload: {fault}; nothing was written")
            return
        probe = faults.Faults()
        with probe.deferred():
            self._payload_fault(payloads, numel)
        bad = probe.any()
        if bad is not None:
            deferred.flag(bad, lambda: CorruptPayloadError(
                f"{self.spec}: corrupt payload: {self._payload_fault(payloads, numel)}"))

    # -- for subclasses -------------------------------------------------------------------
    @abstractmethod
    def _encode(self, fusion, x, state, seed, payload, backend) -> None:
        """Write the payload of C(prologue(x)) and apply the epilogue to ``state``."""

    @abstractmethod
    def _decode_sum(self, payloads, numel, seeds, out, scale, add, backend) -> None:
        """``out (+)= scale * sum_i decode(payloads[i])``; ``out`` is contiguous, the
        payloads contiguous and 8-byte aligned, and checked by :meth:`_payload_fault`."""

    def _payload_fault(self, payloads: torch.Tensor, numel: int) -> str | None:
        """What is wrong with the header or values of the payload rows (``"row 2, bucket 7
        norm is nan"``), or ``None``; at most one host read when nothing is. The payloads
        are contiguous, 8-byte aligned and of the right length. No fields: ``None``."""
        return None

    # -- checks ---------------------------------------------------------------------------
    def _check_numel(self, numel: int) -> int:
        if isinstance(numel, bool) or not isinstance(numel, numbers.Integral) or numel < 1:
            raise ValueError(f"{self.spec}: numel must be a positive int, got {numel!r}")
        if numel >= 2**31:
            raise ValueError(
                f"{self.spec}: at most 2**31 - 1 elements (numel) per call, got {numel}")
        return int(numel)

    def _check_input(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) and hasattr(x, "__dlpack__"):
            try:
                x = torch.from_dlpack(x)  # CuPy, NumPy, JAX arrays: zero-copy
            except (BufferError, RuntimeError, TypeError) as e:
                raise ValueError(f"{self.spec}: cannot take the input through DLPack: {e}") \
                    from None
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"{self.spec}: expected a torch.Tensor or a DLPack array, got {type(x).__name__}"
            )
        if x.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{self.spec}: input dtype must be one of {FLOAT_DTYPES}, got {x.dtype}"
            )
        checks.tensor(x, "input", self.spec)
        if x.numel() == 0:
            raise ValueError(f"{self.spec}: cannot encode an empty tensor")
        self._check_numel(x.numel())
        return x.reshape(-1) if x.is_contiguous() else x.contiguous().view(-1)

    def _check_state(self, fusion, x: torch.Tensor, state) -> None:
        """The fusion's scalars and the state tensors it updates in place (plus
        :func:`~gradpack.kernels.fusion.check_state`), before anything is written."""
        if not isinstance(fusion, Fusion):
            raise ValueError(f"{self.spec}: fusion must be a gradpack Fusion, got "
                             f"{type(fusion).__name__}")
        try:
            scalars = fusion.scalars()
        except (TypeError, ValueError, OverflowError, struct.error) as e:
            raise ValueError(f"{self.spec}: fusion scalars must be real numbers finite in "
                             f"float32 ({fusion}): {e}") from None
        for name, value in scalars.items():
            if not math.isfinite(value):
                raise ValueError(f"{self.spec}: fusion {name} is {value} in float32 ({fusion})")
        if not isinstance(state, dict):
            raise ValueError(f"{self.spec}: state must be a dict of tensors, got "
                             f"{type(state).__name__}")
        names = fusion.state_names()
        for name in names:
            if name in state:
                checks.writable(checks.tensor(state[name], f"state {name!r}", self.spec),
                                f"state {name!r}", self.spec)
        check_state(fusion, x, state)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if checks.overlap(state[a], state[b]):
                    raise ValueError(f"{self.spec}: state {a!r} and {b!r} share memory")

    def _payload_out(self, out, numel, device) -> torch.Tensor:
        nbytes = self.payload_bytes(numel)
        if out is None:
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
        self._check_payload_dims(out, 1, "out")
        checks.writable(out, "out", self.spec)
        if out.numel() != nbytes or not out.is_contiguous() or out.device != torch.device(device):
            raise ValueError(
                f"{self.spec}: out must be a contiguous uint8 tensor of {nbytes} bytes on {device}"
            )
        if not checks.aligned(out, ALIGN):
            raise ValueError(
                f"{self.spec}: out must start at a multiple of {ALIGN} bytes (payloads are "
                f"read and written as 4- and 8-byte words); this one starts "
                f"{out.data_ptr() % ALIGN} bytes past one (storage offset "
                f"{out.storage_offset()}); nothing was written"
            )
        return out

    def _check_payload_dims(self, payload, ndim, what: str = "payload") -> None:
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
            got = payload.dtype if isinstance(payload, torch.Tensor) else type(payload).__name__
            raise ValueError(f"{self.spec}: {what} must be a torch.uint8 tensor, got {got}")
        checks.tensor(payload, what, self.spec)
        if payload.dim() != ndim:
            raise ValueError(f"{self.spec}: {what} must have {ndim} dims, got {payload.dim()}")

    def _dense_out(self, out, numel, dtype, device, add) -> torch.Tensor:
        if out is None:
            if add:
                raise ValueError(f"{self.spec}: add=True needs an out tensor to add into")
            if dtype not in FLOAT_DTYPES:
                raise ValueError(f"{self.spec}: dtype must be one of {FLOAT_DTYPES}, got {dtype}")
            return torch.empty(numel, dtype=dtype, device=device)
        checks.tensor(out, "out", self.spec)
        if out.dtype not in FLOAT_DTYPES or out.numel() != numel or out.device != device:
            raise ValueError(
                f"{self.spec}: out must be a float tensor of {numel} elements on {device}, "
                f"got {out.dtype} with {out.numel()} on {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError(f"{self.spec}: out must be contiguous")
        if not checks.aligned(out, out.element_size()):
            raise ValueError(f"{self.spec}: out must be aligned to its element size "
                             f"({out.element_size()} bytes)")
        return checks.writable(out, "out", self.spec)
