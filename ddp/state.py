"""The hook's state object: hyperparameters, algorithm state, stats (as PyTorch's
``PowerSGDState``), checkpointable and picklable without the process group."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from gradpack.comm.ledger import Ledger

from .checks import HEADER_BYTES, ConfigMismatchError, describe_difference
from .layout import Unit, UnitTable

NONFINITE_POLICIES = ("raise", "skip")
FORMAT = 1


@dataclass
class HookStats:
    """Wall-clock seconds summed over buckets, and event counts."""

    encode_s: float = 0.0  # worker steps (compression + state prologue/epilogue)
    decode_s: float = 0.0  # aggregate steps (decode-and-sum + server state)
    comm_s: float = 0.0  # from issuing the all-gather to its completion callback
    collectives: int = 0
    downlink_bits: int = 0  # the server topology's broadcast, as the papers count it
    skipped: list = field(default_factory=list)  # (step, bucket, ranks) under policy "skip"

    def as_dict(self) -> dict:
        return {"encode_s": self.encode_s, "decode_s": self.decode_s, "comm_s": self.comm_s,
                "collectives": self.collectives,
                "downlink_bits": self.downlink_bits, "skipped": list(self.skipped)}


class HookState:
    """State of :func:`gradpack.ddp.register`'s comm hook on one rank.

    Hyperparameters: ``algorithm``, ``nonfinite`` (policy), ``rank``, ``world_size``,
    ``param_names``, ``process_group`` (``None``: the default group; never pickled).
    State: ``step`` (the global step counter handed to the algorithm), ``units`` (compression
    units and their error-feedback state, see :mod:`gradpack.ddp.layout`).
    Stats: ``ledger`` (:class:`gradpack.comm.ledger.Ledger`: this rank's column holds the
    uplink bits and payload bytes of every bucket message, the 16-byte hook header
    included as its own message, and the bytes handed to each all-gather), ``stats``
    (:class:`HookStats`: timings, the server-topology downlink bits, skipped steps).
    """

    def __init__(self, algorithm, *, rank: int, world_size: int, param_names: list[str],
                 device: torch.device, nonfinite: str = "raise", process_group=None,
                 ledger: Ledger | None = None):
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        # hyperparameters
        self.algorithm = algorithm
        self.nonfinite = nonfinite
        self.rank = rank
        self.world_size = world_size
        self.param_names = list(param_names)
        self.device = torch.device(device)
        self.process_group = process_group
        # state
        self.step = 0
        self.units = UnitTable(self._init_state)
        self.failed: str | None = None
        self._started = -1  # the step whose first bucket the hook has seen
        # stats
        self.ledger = ledger if ledger is not None else Ledger(world_size)
        self.stats = HookStats()
        self._lock = threading.Lock()
        self._index: dict[int, int] = {}  # id(parameter) -> index, set by attach()

    def record(self, step: int, messages, *, downlink_bits: int, handed: int,
               received: int) -> None:
        """Ledger rows of one bucket: the hook header and each unit's payload as uplink
        messages, and the bytes handed to / received from the all-gather."""
        led = self.ledger
        led.begin_step(step)
        led.message(self.rank, "up", bits=8 * HEADER_BYTES, nbytes=HEADER_BYTES)
        for bits, nbytes in messages:
            led.message(self.rank, "up", bits=bits, nbytes=nbytes)
        led.collective("all_gather", self.rank, handed=handed, received=received)
        self.stats.downlink_bits += downlink_bits

    def _init_state(self, numel: int, device) -> dict:
        return self.algorithm.init_state(numel, device, world_size=self.world_size, rank=self.rank)

    def attach(self, params: list[torch.nn.Parameter]) -> None:
        """Map the live parameters (in ``param_names`` order) to their indices."""
        self._index = {id(p): i for i, p in enumerate(params)}

    # -- what every rank must agree on ----------------------------------------------------
    def config(self) -> dict:
        alg = self.algorithm
        return {
            "algorithm": alg.name,
            "compressor": alg.compressor.spec,
            "hparams": dict(alg.hparams),
            "seed": alg.seed,
            "world_size": self.world_size,
            "nonfinite": self.nonfinite,
        }

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's state (error feedback is per rank: save one file per rank)."""
        units = [{
            "params": [self.param_names[p] for p in u.params],
            "numels": list(u.numels),
            "state": {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
                      for k, v in u.state.items()},
        } for u in self.units.units]
        return {
            "format": FORMAT, "config": self.config(), "rank": self.rank, "step": self.step,
            "units": units,
            "ledger": self.ledger.state_dict(),
            "stats": self.stats.as_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("format") != FORMAT:
            raise ValueError(f"gradpack.ddp: unknown hook checkpoint format {sd.get('format')!r}")
        if sd["config"] != self.config():
            raise ConfigMismatchError(describe_difference(
                [sd["config"], self.config()], ["checkpoint", "this hook"],
                f"rank {self.rank}: the checkpoint's configuration differs from this hook's"))
        if sd["rank"] != self.rank:
            raise ValueError(
                f"gradpack.ddp: this checkpoint holds rank {sd['rank']}'s error-feedback state "
                f"and is being loaded on rank {self.rank}; each rank must load its own"
            )
        index = {name: i for i, name in enumerate(self.param_names)}
        units = []
        for u in sd["units"]:
            missing = [n for n in u["params"] if n not in index]
            if missing:
                raise ValueError(f"gradpack.ddp: checkpoint has state for parameters this "
                                 f"model lacks: {missing[:5]}")
            state = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
                     for k, v in u["state"].items()}
            units.append(Unit(tuple(index[n] for n in u["params"]), tuple(u["numels"]), state))
        self.units.units = units
        self.step = int(sd["step"])
        self.ledger.load_state_dict(sd["ledger"])
        st = sd.get("stats") or {}
        self.stats = HookStats(**{k: st[k] for k in HookStats().as_dict() if k in st})
        self.failed = None

    # -- pickling without the process group -----------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("process_group", "_lock", "_index"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.process_group = None  # the default group once re-registered
        self._lock = threading.Lock()
        self._index = {}
