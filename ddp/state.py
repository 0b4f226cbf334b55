"""The hook's state object: hyperparameters, algorithm state, stats (as PyTorch's
``PowerSGDState``), buildable before DDP exists, checkpointable and picklable without the
process group.

A :class:`HookState` is made from an algorithm alone (``gradpack.ddp.hook(alg)``) and binds
itself when it first runs (or at :func:`gradpack.ddp.register`):

- to the process group: ``rank``, ``world_size``, the device, the transport and the ledger;
- to the model's parameters, by *position*: the order in which DDP's first iteration hands
  them to the hook (for a default DDP, one bucket in ``model.parameters()`` order). Positions
  key the error-feedback state in checkpoints, so a fresh DDP over the same model finds its
  state again; names (``"0.weight"``) are known when :func:`register` is given the model and
  are used in messages.

Checkpoints are in :mod:`.checkpoint`: a state dict may be loaded before binding (Lightning
restores before it wraps the model) and is applied when the state binds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from gradpack.comm.distributed import ProcessGroupTransport
from gradpack.comm.ledger import Ledger
from gradpack.errors import CheckpointError, HookStateError

from .checkpoint import apply_state_dict, check_config, gather_state_dict, rank_state_dict
from .layout import UnitTable

NONFINITE_POLICIES = ("raise", "skip")
#: DDP's default bucket caps in bytes (its first bucket, every later one)
DEFAULT_BUCKET_LIMITS = (dist._DEFAULT_FIRST_BUCKET_BYTES, 25 * 2**20)
#: skipped-step events kept in memory and checkpoints (the count is kept in full)
SKIPPED_KEPT = 64


@dataclass
class HookStats:
    """Wall-clock seconds summed over buckets, and event counts."""

    encode_s: float = 0.0  # worker steps (compression + state prologue/epilogue)
    decode_s: float = 0.0  # aggregate steps (decode-and-sum + server state)
    comm_s: float = 0.0  # from issuing the all-gather to its completion callback
    collectives: int = 0
    skipped_count: int = 0  # buckets skipped under policy "skip"
    skipped: list = field(default_factory=list)  # the last SKIPPED_KEPT (step, bucket, ranks)
    ledger: Ledger | None = field(default=None, repr=False, compare=False)

    @property
    def downlink_bits(self) -> int:
        """Bits of the server topology's broadcast as the papers count them (kept in the
        ledger as ``bits_down_server``: the all-gather sends no downlink)."""
        if self.ledger is None:
            return 0
        return int(self.ledger.totals()["bits_down_server"].sum())

    def add_skipped(self, event: tuple) -> None:
        self.skipped_count += 1
        self.skipped = (self.skipped + [event])[-SKIPPED_KEPT:]

    def as_dict(self) -> dict:
        return {"encode_s": self.encode_s, "decode_s": self.decode_s, "comm_s": self.comm_s,
                "collectives": self.collectives, "skipped_count": self.skipped_count,
                "skipped": [list(e) for e in self.skipped]}

    def load(self, sd: dict) -> None:
        for key in ("encode_s", "decode_s", "comm_s", "collectives", "skipped_count"):
            if key in sd:
                setattr(self, key, type(getattr(self, key))(sd[key]))
        self.skipped = [tuple(e) for e in sd.get("skipped", [])][-SKIPPED_KEPT:]


class HookState:
    """State of gradpack's DDP comm hook on one rank.

    Hyperparameters: ``algorithm``, ``nonfinite`` (policy), ``transactional`` (a failed step
    restores every state tensor it wrote, at the price of one copy of the state per step;
    ``False`` saves the copy, and a failed step then leaves the state to be reloaded from a
    checkpoint), ``process_group`` (``None``: the
    default group; never pickled). Bound when the hook first runs: ``rank``, ``world_size``,
    ``device``, ``param_names`` (by position).
    State: ``step`` (the global step counter handed to the algorithm), ``units`` (compression
    units and their error-feedback state, see :mod:`gradpack.ddp.layout`).
    Stats: ``ledger`` (:class:`gradpack.comm.ledger.Ledger`: this rank's column holds the
    uplink bits and payload bytes of every bucket message, the 16-byte hook header
    included as its own message, the bytes handed to each all-gather, and the server
    topology's downlink bits), ``stats`` (:class:`HookStats`: timings, skipped steps).
    """

    def __init__(self, algorithm, *, nonfinite: str = "raise", process_group=None,
                 ledger: Ledger | None = None, transactional: bool = True):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if not hasattr(algorithm, "worker_step") or not hasattr(algorithm, "compressor"):
            raise TypeError(f"gradpack.ddp: expected a gradpack algorithm "
                            f"(gradpack.algorithms.from_spec), got {type(algorithm).__name__}")
        from gradpack.algorithms.peer import PeerAlgorithm

        if isinstance(algorithm, PeerAlgorithm):
            raise ValueError(f"gradpack.ddp: {algorithm.name} keeps one model per worker and "
                             "averages models, not gradients: use "
                             "gradpack.averaging.ModelAverager after optimizer.step(), not a "
                             "DDP comm hook")
        # hyperparameters
        self.algorithm = algorithm
        self.nonfinite = nonfinite
        self.transactional = bool(transactional)  # snapshot state so a failed step undoes
        self.process_group = process_group
        # bound to the process group and the model (bind_group, then positions)
        self.rank: int | None = None
        self.world_size: int | None = None
        self.device: torch.device | None = None
        self.param_names: list[str] = []
        self.param_numels: list[int] = []
        self.names_by_id: dict[int, str] = {}  # id(parameter) -> name, when the model is known
        self.binding_step: int | None = None  # the step whose buckets assign positions
        self.checked = False  # the cross-rank config check ran (at register)
        self._index: dict[int, int] = {}  # id(parameter) -> position
        self.transport: ProcessGroupTransport | None = None
        self.pending: dict | None = None  # a state dict loaded before binding
        # state
        self.step = 0
        self.units = UnitTable(self._init_state)
        self.bucket_limits = list(DEFAULT_BUCKET_LIMITS)  # DDP's caps (see .layout.bind)
        self.failed: str | None = None
        self.last_error: BaseException | None = None  # of the last step, typed (DDP re-raises
        # a hook's error as a RuntimeError)
        self.round = None  # the step in flight (.round.Round)
        self.spares: dict = {}  # id(unit) -> (unit, snapshot buffers), see .round
        # stats
        self.ledger = ledger
        self.stats = HookStats(ledger=ledger)
        self._lock = threading.Lock()

    def _init_state(self, numel: int, device) -> dict:
        return self.algorithm.init_state(numel, device, world_size=self.world_size, rank=self.rank)

    # -- binding --------------------------------------------------------------------------
    def bind_group(self, device: torch.device) -> None:
        """Bind to the process group (idempotent); applies a state dict loaded earlier."""
        if self.transport is not None:
            return
        if not dist.is_available() or not dist.is_initialized():
            raise HookStateError("gradpack.ddp: the hook ran without torch.distributed "
                                 "initialized; call torch.distributed.init_process_group first")
        rank = dist.get_rank(self.process_group)
        n = dist.get_world_size(self.process_group)
        if self.rank is not None and (self.rank, self.world_size) != (rank, n):
            raise CheckpointError(
                f"gradpack.ddp: this hook state is rank {self.rank} of {self.world_size} and is "
                f"being used on rank {rank} of {n}; each rank must use its own state"
            )
        self.rank, self.world_size, self.device = rank, n, torch.device(device)
        if self.ledger is None:
            self.ledger = Ledger(n)
        elif self.ledger.world_size != n:
            raise ValueError(f"gradpack.ddp: the ledger is for {self.ledger.world_size} ranks, "
                             f"the process group has {n}")
        self.stats.ledger = self.ledger
        self.transport = ProcessGroupTransport(self.process_group, ledger=self.ledger)
        if self.pending is not None:
            pending, self.pending = self.pending, None
            apply_state_dict(self, pending)

    def name_parameters(self, named) -> None:
        """Remember the model's parameter names (``named``: ``(name, parameter)`` pairs) for
        messages; positions are still assigned by the hook."""
        self.names_by_id = {id(p): name for name, p in named}

    def positions(self, params, bucket_index: int) -> list[int]:
        """Positions of a bucket's parameters, assigning new ones during the binding step."""
        out, new = [], []
        for p in params:
            pos = self._index.get(id(p))
            if pos is None:
                if self.binding_step is not None and self.binding_step != self.step:
                    raise HookStateError(
                        f"gradpack.ddp (rank {self.rank}): bucket {bucket_index} holds a "
                        "parameter this hook state has not seen in its first step: the state "
                        "is bound to another model's parameters. Build a new state "
                        "(gradpack.ddp.hook(algorithm)) per model, or call state.unbind() "
                        "before registering it on a new DDP model of the same architecture"
                    )
                self.binding_step = self.step
                pos = len(self.param_names)
                self._index[id(p)] = pos
                self.param_names.append(self.names_by_id.get(id(p), f"parameter {pos}"))
                self.param_numels.append(p.numel())
                new.append(pos)
            out.append(pos)
        if new:
            self._check_loaded_numels(new)
        return out

    def _check_loaded_numels(self, new: list[int]) -> None:
        owner = self.units.owner()
        for pos in new:
            unit = owner.get(pos)
            if unit is None:
                continue
            saved = unit.numels[unit.params.index(pos)]
            if saved != self.param_numels[pos]:
                raise CheckpointError(
                    f"gradpack.ddp (rank {self.rank}): the loaded state holds {saved} elements "
                    f"for {self.param_names[pos]} (position {pos}), the model "
                    f"{self.param_numels[pos]}: the checkpoint is of another model"
                )

    def unbind(self) -> None:
        """Forget the live parameters (keeps the error-feedback state, keyed by position),
        e.g. before registering this state on a new DDP model of the same architecture."""
        self._index = {}
        self.param_names, self.param_numels, self.binding_step = [], [], None
        self.checked = False

    # -- what every rank must agree on ----------------------------------------------------
    def config(self) -> dict:
        alg = self.algorithm
        return {
            "algorithm": alg.name,
            "compressor": alg.compressor.spec,
            "hparams": dict(alg.hparams),
            "seed": alg.seed,
            "nonfinite": self.nonfinite,
        }

    # -- checkpoints (see .checkpoint) ----------------------------------------------------
    def state_dict(self, all_ranks: bool = False) -> dict:
        """This rank's state (tensors and plain values; its size does not grow with the
        run). ``all_ranks=True``: collective, every rank's state in one dict, which every
        rank can load (a single rank-0 checkpoint restores all ranks)."""
        return gather_state_dict(self) if all_ranks else rank_state_dict(self)

    def load_state_dict(self, sd: dict) -> None:
        """Load a state dict of this rank, or an ``all_ranks`` one (this rank's part); before
        the state is bound it is checked now and applied when the hook binds."""
        check_config(self, sd)
        if self.transport is not None:
            apply_state_dict(self, sd)
        else:
            self.pending = sd

    # -- pickling without the process group -----------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("process_group", "_lock", "_index", "transport", "names_by_id", "round",
                    "spares", "last_error"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("bucket_limits", list(DEFAULT_BUCKET_LIMITS))
        self.__dict__.setdefault("transactional", True)
        self.process_group = None  # the default group once re-registered
        self._lock = threading.Lock()
        self._index, self.names_by_id = {}, {}
        self.transport = None  # rebinds (checking rank and world size) when registered again
        self.round, self.spares, self.last_error = None, {}, None
        self.param_names, self.param_numels, self.binding_step = [], [], None
