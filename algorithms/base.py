"""The algorithm contract: one definition serves the simulator, the all-gather
transport and the DDP comm hook (DESIGN.md, "the data path").

A step of data-parallel training with compression is three phases, and only the
middle one communicates::

    payload   = alg.worker_step(state, grad, step=k, rank=i, stream=b)   # compute only
    gathered  = transport.all_gather(payload)                           # [n, P] uint8, bytes only
    direction = alg.aggregate(state, gathered, step=k, stream=b)         # compute only

``direction`` is dense fp32 and is what a plain SGD step applies: ``x <- x - lr * direction``
(for EF14, whose memory holds ``gamma * grad``, ``direction = mean(Delta_i) / gamma``; for DORE,
``direction = -beta * q_hat / lr`` so the model follows ``x_hat <- x_hat + beta * q_hat``).
``aggregate`` never issues a collective: every rank computes the same direction from the same
gathered bytes, so server-side state (EF21's ``g``, DORE's ``x``, ``h``, ``e``) is replicated on
each rank. For a real server topology, ``aggregate`` splits into
``down = alg.server_step(state, gathered, ...)`` on the server (a packed downlink payload) and
``direction = alg.apply_downlink(state, down, ...)`` on every rank.

``state`` is a flat ``dict[str, Tensor]`` of tensors plus ints, made by
``alg.init_state(numel, device, world_size=n, rank=i, dtype=torch.float32)``: picklable,
checkpointable, and the same on every rank wherever the algorithm says so. The state dtype is
float32 (the fused kernels' state, the DDP hook's) or float64 (a float64 simulation: the same
prologue and epilogue run unfused in float64, :mod:`.unfused`, and only the compressor's wire
payload is float32); the direction ``aggregate`` returns has the state's dtype. Seeds for
stochastic compressors derive from ``(alg.seed, step, rank, stream)`` by
:meth:`Algorithm.seed_for`, so every rank can regenerate every other rank's randomness
(Random-K indices) without sending it.

Step ``k = 0`` is the initialisation round: algorithms whose papers start from an
uncompressed estimator (EF21's ``g_i^0 = grad f_i(x^0)``, EF21-SGDM's ``v_i^0 = g_i^0``) send it
uncompressed at ``step=0``, so pass the global step counter starting at 0. Message sizes
depend only on ``(numel, step)``: ``alg.payload_bytes(numel, step)`` sizes the all-gather and
``alg.downlink_bytes(numel, step)`` the server broadcast without a handshake, and
``alg.uplink_bits`` / ``alg.downlink_bits`` are the bits the papers count (the ledger
records both, :mod:`gradpack.comm.ledger`).

Step sizes: ``x <- x - lr * direction`` is applied by the caller. EF14 and DORE keep the
step size inside their memories in the seeds; here it is the hparam ``gamma`` (default 1:
the memories are in gradient units and ``lr`` stays outside, the form that survives a
learning-rate schedule; with ``gamma = lr`` the updates are the seeds' literally, and for a
positively homogeneous compressor the two are the same iterates in exact arithmetic).

Compressor classes: EF14 and the EF21 family need a contractive compressor (seed 003), DORE
an unbiased one (seed 002); given the other kind they warn with :class:`CompressorWarning`
(they run, as the papers' own ablations do), never raise. DCGD with a biased compressor warns
too: seed 004's Top-1 example shows it can diverge.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from gradpack.compressors import Compressor, from_spec
from gradpack.kernels.fusion import Fusion
from gradpack.kernels.philox import M64, SEED_MAX, check_seed, mix64

from .unfused import unfused_step

#: ``rank`` argument of :meth:`Algorithm.seed_for` for the server's own compression (DORE)
SERVER = -1


class CompressorWarning(UserWarning):
    """An algorithm was given a compressor outside the class its theory assumes."""


# compressor classes are judged at this size (omega and alpha may depend on numel)
_PROBE_NUMEL = 2**20
# a biased compressor this close to exact (fp16, bf16 casts) is not worth a warning
_NEAR_EXACT = 1.0 - 1e-3
#: dtypes algorithm state may have: the fused kernels' float32, or float64 (unfused)
STATE_DTYPES = (torch.float32, torch.float64)


def _omega(c: Compressor) -> float:
    try:
        return c.omega(_PROBE_NUMEL)
    except ValueError:
        return float("inf")


def _alpha(c: Compressor) -> float:
    try:
        return c.alpha(_PROBE_NUMEL)
    except ValueError:
        return 0.0


class Algorithm:
    """Base class: one compressed data-parallel method, stateless apart from ``state``.

    Subclasses set ``name``, ``needs`` (``"any"``, ``"contractive"`` or ``"unbiased"``),
    ``worker_state`` and ``server_state`` (the fp32 tensors of :meth:`init_state`), and
    implement :meth:`fusion`, :meth:`fused_state` and :meth:`_aggregate` (``aggregate``
    checks the arguments and calls it). The server topology's :meth:`server_step` /
    :meth:`apply_downlink` default to an uncompressed fp32 downlink of the direction (the
    papers' "master broadcasts x^{t+1}").
    """

    name: str = ""
    needs: str = "any"
    #: per-rank worker tensors and replicated server tensors, all ``numel`` elements of the
    #: state dtype
    worker_state: tuple[str, ...] = ()
    server_state: tuple[str, ...] = ()

    def __init__(self, compressor: Compressor, *, seed: int = 0):
        if not isinstance(compressor, Compressor):
            raise ValueError(
                f"{self.name}: compressor must be a gradpack Compressor (use "
                f"gradpack.compressors.from_spec), got {type(compressor).__name__}"
            )
        self.compressor = compressor
        self.seed = check_seed(seed)
        # the uncompressed messages (EF21's g_i^0, the dense downlink) use the same backend
        self.dense = from_spec(
            "identity", backend=compressor.backend, check_finite=compressor.check_finite
        )
        self._check_compressor_class()

    # -- description ----------------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        """The method's hyperparameters (what ``from_spec`` was given besides the compressor)."""
        return {}

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.hparams.items())
        return f"from_spec({self.name!r}, {self.compressor.spec!r}{args}, seed={self.seed})"

    def with_seed(self, seed: int) -> Algorithm:
        """A copy drawing its compressor randomness from ``seed``."""
        other = copy.copy(self)
        other.seed = check_seed(seed)
        return other

    def _check_compressor_class(self) -> None:
        c = self.compressor
        biased = not c.unbiased and _alpha(c) < _NEAR_EXACT
        msg = None
        if self.needs == "contractive" and c.unbiased and _omega(c) >= 1.0:
            msg = (f"{self.name} assumes a contractive compressor (seed 003) and {c.spec!r} is "
                   "unbiased with omega >= 1, so not contractive: the method may diverge; "
                   "use topk or sign")
        elif self.needs == "unbiased" and biased:
            msg = (f"{self.name} assumes an unbiased compressor (seed 002) and {c.spec!r} is "
                   "biased: the running averages h_i no longer track the gradients in "
                   "expectation; use qsgd, ssign or randk")
        elif self.needs == "any" and biased:
            msg = (f"{self.name} with the biased compressor {c.spec!r} can diverge (seed 004's "
                   "Top-1 example); use error feedback (ef14, ef21) for biased compressors")
        if msg:
            warnings.warn(msg, CompressorWarning, stacklevel=3)

    # -- randomness -----------------------------------------------------------------------
    def seed_for(self, step: int, rank: int, stream: int = 0) -> int:
        """Philox key of rank ``rank``'s compression at ``step`` for bucket ``stream``
        (``rank=SERVER`` for the server's downlink): a hash of ``(seed, step, rank, stream)``,
        so any rank can regenerate any other rank's randomness."""
        for name, v in (("step", step), ("rank", rank), ("stream", stream)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{self.name}: {name} must be an int, got {v!r}")
        if step < 0 or stream < 0 or rank < SERVER:
            raise ValueError(f"{self.name}: bad seed coordinates step={step} rank={rank} "
                             f"stream={stream}")
        z = self.seed
        for v in (step, rank + 1, stream):
            z = mix64(z ^ mix64(v & M64))
        return z % SEED_MAX

    # -- message sizes --------------------------------------------------------------------
    def uplink_compressor(self, step: int) -> Compressor:
        """The compressor of the workers' messages at ``step``."""
        return self.compressor

    def downlink_compressor(self, step: int) -> Compressor:
        """The compressor of the server's broadcast at ``step`` (server topology)."""
        return self.dense

    def payload_bytes(self, numel: int, step: int) -> int:
        """Bytes of one worker's uplink payload (the all-gather's per-rank size)."""
        return self.uplink_compressor(step).payload_bytes(numel)

    def uplink_bits(self, numel: int, step: int) -> int:
        """Bits of one worker's uplink message as the papers count them."""
        return self.uplink_compressor(step).wire_bits(numel)

    def downlink_bytes(self, numel: int, step: int) -> int:
        """Bytes of the server's broadcast in the server topology."""
        return self.downlink_compressor(step).payload_bytes(numel)

    def downlink_bits(self, numel: int, step: int) -> int:
        """Bits each worker receives from the server in the server topology."""
        return self.downlink_compressor(step).wire_bits(numel)

    # -- state ----------------------------------------------------------------------------
    def init_state(
        self, numel: int, device: torch.device | str = "cpu", *, world_size: int, rank: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, Any]:
        """Zero state of rank ``rank`` for a flat parameter vector of ``numel`` elements: the
        worker tensors, a replica of the server tensors, and the ints that identify it, in
        ``dtype`` (float32, or float64 for float64 simulations)."""
        if not isinstance(numel, int) or numel < 1:
            raise ValueError(f"{self.name}: numel must be a positive int, got {numel!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"{self.name}: world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"{self.name}: rank must be in [0, {world_size}), got {rank!r}")
        if dtype not in STATE_DTYPES:
            raise ValueError(f"{self.name}: state dtype must be one of {STATE_DTYPES}, got "
                             f"{dtype}")
        state: dict[str, Any] = {"numel": numel, "world_size": world_size, "rank": rank}
        for key in self.worker_state + self.server_state:
            state[key] = torch.zeros(numel, dtype=dtype, device=device)
        if not self.worker_state + self.server_state and dtype != torch.float32:
            state["dtype"] = str(dtype).removeprefix("torch.")  # stateless: remember it
        return state

    def check_state(self, state: dict[str, Any]) -> tuple[int, int]:
        """Validate a state dict (e.g. after ``load_state_dict``); returns ``(numel, n)``."""
        if not isinstance(state, dict):
            raise ValueError(f"{self.name}: state must be a dict from init_state")
        missing = [k for k in ("numel", "world_size", "rank", *self.worker_state,
                               *self.server_state) if k not in state]
        if missing:
            raise ValueError(f"{self.name}: state lacks {missing}; was it made by "
                             f"{self.name}.init_state?")
        numel = state["numel"]
        dtypes = set()
        for key in self.worker_state + self.server_state:
            t = state[key]
            if not isinstance(t, torch.Tensor) or t.dtype not in STATE_DTYPES \
                    or t.numel() != numel:
                raise ValueError(f"{self.name}: state[{key!r}] must be float32 or float64 with "
                                 f"{numel} elements")
            dtypes.add(t.dtype)
        if len(dtypes) > 1:
            raise ValueError(f"{self.name}: state tensors have mixed dtypes "
                             f"{sorted(map(str, dtypes))}")
        return numel, state["world_size"]

    def state_dtype(self, state: dict[str, Any]) -> torch.dtype:
        """The dtype of ``state``'s tensors (float32 when it has none)."""
        for key in self.worker_state + self.server_state:
            return state[key].dtype
        return getattr(torch, state.get("dtype", "float32"))

    # -- the three phases -----------------------------------------------------------------
    def fusion(self, step: int, numel: int) -> Fusion:
        """The prologue/epilogue of the worker's fused compression at ``step``."""
        raise NotImplementedError

    def fused_state(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The state tensors under the names the fused kernel uses (``v``, ``u``, ``h``)."""
        return {}

    def worker_step(
        self,
        state: dict[str, Any],
        grad: torch.Tensor,
        *,
        step: int,
        rank: int,
        stream: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rank ``rank``'s message at ``step``: one fused compression pass over ``grad`` that
        also updates the worker state in place. Compute only; returns the uint8 payload."""
        numel, _ = self.check_state(state)
        if rank != state["rank"]:
            raise ValueError(f"{self.name}: worker_step for rank {rank} on rank "
                             f"{state['rank']}'s state")
        if grad.numel() != numel:
            raise ValueError(f"{self.name}: gradient has {grad.numel()} elements, state "
                             f"{numel}")
        return self._compress(self.uplink_compressor(step), self.fusion(step, numel), grad,
                              self.fused_state(state), seed=self.seed_for(step, rank, stream),
                              out=out, dtype=self.state_dtype(state))

    def aggregate(
        self,
        state: dict[str, Any],
        gathered: torch.Tensor,
        *,
        step: int,
        stream: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The dense direction (in the state's dtype) from the all-gathered payloads
        ``[n, P]``; updates the replicated server state. Compute only."""
        _, n = self.check_state(state)
        if not isinstance(gathered, torch.Tensor) or gathered.dim() != 2 or gathered.shape[0] != n:
            got = list(gathered.shape) if isinstance(gathered, torch.Tensor) else type(gathered)
            raise ValueError(f"{self.name}: expected [{n}, P] gathered payloads, got {got}")
        return self._aggregate(state, gathered, step, stream, out)

    def _aggregate(self, state: dict[str, Any], gathered: torch.Tensor, step: int, stream: int,
                   out: torch.Tensor | None) -> torch.Tensor:
        """The algorithm's aggregate step (``aggregate`` has checked the arguments)."""
        raise NotImplementedError

    def server_step(
        self, state: dict[str, Any], gathered: torch.Tensor, *, step: int, stream: int = 0
    ) -> torch.Tensor:
        """Server topology, on the server only: the packed downlink message."""
        direction = self.aggregate(state, gathered, step=step, stream=stream)
        wire = direction if direction.dtype != torch.float64 else direction.to(torch.float32)
        return self.dense.encode(wire, seed=self.seed_for(step, SERVER, stream))

    def apply_downlink(
        self,
        state: dict[str, Any],
        down: torch.Tensor,
        *,
        step: int,
        stream: int = 0,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Server topology, on every rank: the direction from the server's message."""
        numel, _ = self.check_state(state)
        if not isinstance(down, torch.Tensor) or down.dim() != 1:
            raise ValueError(f"{self.name}: downlink payload must be a 1-D tensor")
        return self._decode_into(self.downlink_compressor(step), down[None], numel,
                                 [self.seed_for(step, SERVER, stream)], out=out, scale=1.0,
                                 add=False, dtype=self.state_dtype(state))

    # -- helpers for subclasses -----------------------------------------------------------
    @staticmethod
    def _compress(compressor: Compressor, fusion: Fusion, src: torch.Tensor,
                  tensors: dict[str, torch.Tensor], *, seed: int, out: torch.Tensor | None,
                  dtype: torch.dtype) -> torch.Tensor:
        """One fused compression pass when the state is float32 (the kernels' state), else
        the same prologue/epilogue unfused in ``dtype`` (:func:`.unfused.unfused_step`)."""
        if dtype == torch.float32 and src.dtype != torch.float64:
            return compressor.step(fusion, src, tensors, seed=seed, out=out)
        return unfused_step(compressor, fusion, src, tensors, seed=seed, out=out)

    @staticmethod
    def _decode_into(compressor: Compressor, payloads: torch.Tensor, numel: int,
                     seeds: list[int], *, out: torch.Tensor | None, scale: float, add: bool,
                     dtype: torch.dtype) -> torch.Tensor:
        """``out (+)= scale * sum_i C_i``: one fp32 decode-and-sum pass, or for float64 ``out``
        each message decoded exactly in fp32 and accumulated in float64."""
        if out is None:
            if add:
                raise ValueError("add=True needs an out tensor to add into")
            out = torch.empty(numel, dtype=dtype, device=payloads.device)
        if out.dtype != torch.float64:
            return compressor.decode_sum(payloads, numel, seeds=seeds, out=out, scale=scale,
                                         add=add)
        if not add:
            out.zero_()
        for row, s in zip(payloads, seeds, strict=True):
            out.add_(compressor.decode(row, numel, seed=s), alpha=scale)
        return out

    def _seeds(self, step: int, n: int, stream: int) -> list[int]:
        return [self.seed_for(step, r, stream) for r in range(n)]

    def _decode_mean(
        self,
        state: dict[str, Any],
        gathered: torch.Tensor,
        *,
        step: int,
        stream: int,
        out: torch.Tensor | None,
        scale: float = 1.0,
        add: bool = False,
    ) -> torch.Tensor:
        """``out (+)= scale / n * sum_i C_i`` in one decode-and-sum pass."""
        numel, n = self.check_state(state)
        if gathered.dim() != 2 or gathered.shape[0] != n:
            raise ValueError(f"{self.name}: expected [{n}, P] gathered payloads, got "
                             f"{list(gathered.shape)}")
        return self._decode_into(self.uplink_compressor(step), gathered, numel,
                                 self._seeds(step, n, stream), out=out, scale=scale / n, add=add,
                                 dtype=self.state_dtype(state))


def as_direction_out(out: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``out`` if given (checked), else a new tensor shaped like ``like`` (of its dtype)."""
    if out is None:
        return torch.empty_like(like)
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"out must be {like.dtype} with {like.numel()} elements on "
                         f"{like.device}")
    return out


__all__: Sequence[str] = ["SERVER", "STATE_DTYPES", "Algorithm", "CompressorWarning",
                          "as_direction_out"]
