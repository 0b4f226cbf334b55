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

Errors. Hyperparameters are checked once, at construction (``from_spec`` or the class), by
:mod:`.checks`: each must be a real number (an int for ``seed`` and ``local_steps``), finite,
in the range its paper gives (each class's ``ranges`` says which, with the source) and, for
reals, finite and nonzero in float32; anything else is a ``ValueError`` naming the algorithm,
the hyperparameter and the value. Per-call arguments (``step``, ``rank``, ``lr``, ``out``,
payload shapes) are ``ValueError`` too. ``TypeError`` only where Python itself raises it: an
unknown keyword or a missing argument of a direct call (``from_spec`` turns an unknown
hyperparameter into a ``ValueError`` naming the ones it takes). Data errors are typed
(:mod:`gradpack.errors`): a corrupt payload is :class:`CorruptPayloadError`, an inf or nan
input, or a state update that would overflow float32, is :class:`NonFiniteError`.

Transactions. Every phase (``worker_step``, ``aggregate``, ``server_step``,
``apply_downlink``; :mod:`.peer`'s ``local_update``, ``message``, ``combine``) either
completes or raises with every state tensor exactly as it was, bit for bit: arguments and
payloads are checked before the first write (the compressor's ``step`` and ``decode_sum``
check everything before theirs), server-side state is computed into scratch, checked finite
(:func:`.checks.all_finite`: one ``aminmax`` per tensor, one host read) and committed last,
and the few tensors a fused worker step updates in place are snapshotted and restored if
the step leaves them non-finite (an overflow no input check can see: ``g_i + c_i`` past
3.4e38). ``out`` (a caller's buffer, not state) may hold anything after a raise; the payload
of a worker step that raised must not be sent. With the compressor's ``check_finite=False``
the finite checks and snapshots are skipped (no host reads), as the compressor skips its own.
Inside deferred checks (:mod:`gradpack.compressors.faults`, how the DDP hook runs a step)
nothing is read either: every check becomes a flag, the state is written, and the caller,
which snapshotted it, restores it if a flag is set.

Cost on the hot path (d = 1e6 fp32, one CPU core): a worker step adds one ``aminmax`` of
``h`` and a copy of each tensor it writes (about 0.07 ms and 0.06 ms each; no copy under
deferred checks); EF21's aggregate one copy and one ``aminmax``; DORE's server step two
copies (the commit) and one ``aminmax`` of each of ``h``, ``e`` and the direction; DCGD's and
EF14's aggregate one ``aminmax`` of the direction.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from gradpack.compressors import Compressor, from_spec
from gradpack.errors import NonFiniteError
from gradpack.kernels.fusion import Fusion
from gradpack.kernels.philox import M64, SEED_MAX, mix64

from . import checks
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
    #: each real hyperparameter's valid range (an interval, :mod:`.checks`), from its paper
    ranges: dict[str, str] = {}

    def __init__(self, compressor: Compressor, *, seed: int = 0):
        if not isinstance(compressor, Compressor):
            raise ValueError(
                f"{self.name}: compressor must be a gradpack Compressor (use "
                f"gradpack.compressors.from_spec), got {type(compressor).__name__}"
            )
        self.compressor = compressor
        self.seed = self._seed(seed)
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
        other.seed = self._seed(seed)
        return other

    def _seed(self, seed) -> int:
        return checks.integer(self.name, "seed", seed, f"[0, {SEED_MAX})")

    def _hparam(self, name: str, value) -> float:
        """Real hyperparameter ``name`` checked against ``ranges[name]`` (:func:`.checks.real`)."""
        return checks.real(self.name, name, value, self.ranges[name])

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
        if not isinstance(grad, torch.Tensor) or grad.numel() != numel:
            got = grad.numel() if isinstance(grad, torch.Tensor) else type(grad).__name__
            raise ValueError(f"{self.name}: gradient must be a tensor of {numel} elements, "
                             f"got {got}")
        return self._compress(self.uplink_compressor(step), self.fusion(step, numel), grad,
                              self.fused_state(state), seed=self.seed_for(step, rank, stream),
                              out=out, dtype=self.state_dtype(state),
                              what=f"worker step {step} of rank {rank}", state=state)

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
        self._check_out(state, out)
        return self._aggregate(state, gathered, step, stream, out)

    def _aggregate(self, state: dict[str, Any], gathered: torch.Tensor, step: int, stream: int,
                   out: torch.Tensor | None) -> torch.Tensor:
        """The algorithm's aggregate step (``aggregate`` has checked the arguments)."""
        raise NotImplementedError

    def server_step(
        self, state: dict[str, Any], gathered: torch.Tensor, *, step: int, stream: int = 0
    ) -> torch.Tensor:
        """Server topology, on the server only: the packed downlink message."""
        seed = self.seed_for(step, SERVER, stream)
        if self.state_dtype(state) != torch.float64:
            # aggregate's direction is finite (it checks), so the fp32 encode cannot fail
            return self.dense.encode(self.aggregate(state, gathered, step=step, stream=stream),
                                     seed=seed)
        # float64: the cast to the fp32 wire can still overflow after aggregate committed
        saved = {k: state[k].clone() for k in self.server_state}
        try:
            direction = self.aggregate(state, gathered, step=step, stream=stream)
            return self.dense.encode(direction.to(torch.float32), seed=seed)
        except BaseException:
            for k, t in saved.items():
                state[k].copy_(t)
            raise

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
    def _compress(self, compressor: Compressor, fusion: Fusion, src: torch.Tensor,
                  tensors: dict[str, torch.Tensor], *, seed: int, out: torch.Tensor | None,
                  dtype: torch.dtype, what: str = "", state: dict[str, Any] | None = None,
                  guard: bool = True) -> torch.Tensor:
        """One fused compression pass when the state is float32 (the kernels' state), else
        the same prologue/epilogue unfused in ``dtype`` (:func:`.unfused.unfused_step`).

        The pass checks its arguments and input before writing, but a finite input can
        still overflow the ``h`` it writes (``g_i + c_i``, ``e_i + gamma g - c``, or a QSGD
        norm past 3.4e38 that makes ``c`` nan). With ``guard`` (and the compressor's
        ``check_finite``) the tensors it writes are snapshotted first and ``h`` is checked
        after (one ``aminmax``); if it is not finite they are restored and
        :class:`NonFiniteError` is raised. The momenta ``v``, ``u`` are convex combinations
        of finite values and cannot overflow (:func:`.checks.momentum_bounded`, verified for
        this ``eta``), so only ``h`` is read unless that check fails. Without ``guard`` the
        caller passes scratch state of its own."""
        written = [k for k in fusion.state_names() if k in tensors] \
            if guard and compressor.check_finite else []
        if dtype == torch.float32 and src.dtype != torch.float64:
            run = compressor.step
        else:
            def run(*args, **kw):
                return unfused_step(compressor, *args, **kw)
        if not written:
            return run(fusion, src, tensors, seed=seed, out=out)
        scalars = fusion.scalars()
        check = [k for k in written if k == "h"
                 or not checks.momentum_bounded(scalars["keep"], scalars["take"])]
        names = {id(t): k for k, t in (state or {}).items() if isinstance(t, torch.Tensor)}

        def error() -> NonFiniteError:
            bad = [names.get(id(tensors[k]), k) for k in check]
            return NonFiniteError(
                f"{self.name}: {what or 'compression'} ({compressor.spec}) would leave {bad} "
                "non-finite: a finite input overflowed float32 (the state or the input is "
                "too large); every state tensor is as before and the payload must not be "
                "sent")

        collect = checks.deferred()
        if collect is not None:  # deferred checks: the caller snapshots and restores
            payload = run(fusion, src, tensors, seed=seed, out=out)
            checks.require_finite(error, *(tensors[k] for k in check))
            return payload
        saved = {k: tensors[k].clone() for k in written}
        try:
            payload = run(fusion, src, tensors, seed=seed, out=out)  # raises before writing
            if not checks.all_finite(*(tensors[k] for k in check)):
                raise error()
        except BaseException:
            for k, t in saved.items():
                tensors[k].copy_(t)
            raise
        return payload

    def _require_finite(self, what: str, **tensors: torch.Tensor) -> None:
        """Raise :class:`NonFiniteError` (naming ``what`` and the tensors) unless every one of
        ``tensors`` is finite (inside deferred checks: record it, :func:`.checks.require_finite`);
        a no-op with the compressor's ``check_finite`` off."""
        if not self.compressor.check_finite:
            return

        def error() -> NonFiniteError:
            # (deferred: read later, maybe after a restore; then name them all)
            bad = [k for k, t in tensors.items() if not checks.all_finite(t)] or list(tensors)
            return NonFiniteError(
                f"{self.name}: {what} would make {bad} non-finite (inf/nan: a float32 "
                "overflow, or a non-finite input); no state was changed")

        checks.require_finite(error, *tensors.values())

    def _check_out(self, state: dict[str, Any], out: torch.Tensor | None) -> None:
        """``out`` must not share memory with a state tensor (it is written before commit)."""
        if out is None:
            return
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"{self.name}: out must be a tensor, got {type(out).__name__}")
        for key in self.worker_state + self.server_state:
            if checks.overlap(out, state[key]):
                raise ValueError(f"{self.name}: out shares memory with state[{key!r}]")

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
