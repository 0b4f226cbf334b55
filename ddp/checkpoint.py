"""The hook state's checkpoint format: tensors and plain values only, bounded in size.

A rank's state dict (``state.state_dict()``)::

    {"format": 2, "kind": "rank", "config": {algorithm, compressor, hparams, seed, nonfinite},
     "rank": r, "world_size": n, "step": k,
     "parameters": [[name, numel], ...],            # by position (see .state)
     "units": [{"params": [position, ...], "numels": [...], "state": {key: tensor | int}}],
     "ledger": Ledger.state_dict() (totals and the step in progress), "stats": {...}}

Every tensor is on the CPU; a default ``torch.load`` (``weights_only=True``) reads it, and
its size depends on the model, never on the number of steps run (the ledger's per-step
history goes to the run log, :class:`gradpack.comm.JsonLinesLog`).

The collective form (``state.state_dict(all_ranks=True)``, every rank calls it) gathers every
rank's dict to the group's rank 0: ``{"format": 2, "kind": "all_ranks", "world_size": n,
"config": ..., "ranks": [dict of rank 0, ...]}``. That one file restores every rank: each
loads its own part. The other ranks get the same dict with ``"ranks": None`` (frameworks
save on rank 0 only), which cannot be loaded.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gradpack.comm.distributed import describe_difference
from gradpack.errors import CheckpointError, ConfigMismatchError

from .layout import Unit

FORMAT = 2


def rank_state_dict(state) -> dict:
    """This rank's state (a state dict loaded before binding is returned as it is)."""
    if state.pending is not None:
        return state.pending
    rank, n = state.rank, state.world_size
    if rank is None and dist.is_available() and dist.is_initialized():  # never ran: fresh
        rank, n = dist.get_rank(state.process_group), dist.get_world_size(state.process_group)
    units = [{
        "params": list(u.params),
        "numels": list(u.numels),
        "state": {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
                  for k, v in u.state.items()},
    } for u in state.units.units]
    return {
        "format": FORMAT, "kind": "rank", "config": state.config(), "rank": rank,
        "world_size": n, "step": state.step,
        "parameters": [[name, numel] for name, numel in
                       zip(state.param_names, state.param_numels, strict=True)],
        "units": units,
        "ledger": state.ledger.state_dict() if state.ledger is not None else None,
        "stats": state.stats.as_dict(),
    }


def gather_state_dict(state) -> dict:
    """Collective over the hook's process group: every rank's dict, on the group's rank 0."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("gradpack.ddp: state_dict(all_ranks=True) is a collective and "
                           "needs torch.distributed initialized")
    group = state.process_group
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    pending = state.pending
    if pending is not None and pending.get("kind") == "all_ranks":
        return pending  # every rank loaded this same gathered dict and has not bound since
    mine = rank_state_dict(state)
    root = dist.get_global_rank(group, 0) if group is not None else 0
    parts: list | None = [None] * n if rank == 0 else None
    dist.gather_object(mine, parts, dst=root, group=group)
    return {"format": FORMAT, "kind": "all_ranks", "world_size": n, "config": state.config(),
            "ranks": parts}


def check_config(state, sd: dict) -> None:
    """Raise unless ``sd`` is a hook state dict of this format and configuration."""
    if not isinstance(sd, dict) or sd.get("format") != FORMAT:
        got = sd.get("format") if isinstance(sd, dict) else type(sd).__name__
        raise CheckpointError(f"gradpack.ddp: not a hook state dict of format {FORMAT} "
                              f"(got format {got!r})")
    if sd.get("kind") == "all_ranks" and sd.get("ranks") is None:
        raise CheckpointError(
            "gradpack.ddp: this gathered hook state is a non-zero rank's copy, without the "
            "states (state_dict(all_ranks=True) returns them on rank 0): load the dict that "
            "rank 0 saved, on every rank"
        )
    mine = state.config()
    if sd["config"] != mine:
        who = f"rank {state.rank}" if state.rank is not None else "this rank"
        raise ConfigMismatchError(describe_difference(
            [sd["config"], mine], ["checkpoint", "this hook"],
            f"{who}: the checkpoint's configuration differs from this hook's", "gradpack.ddp"))


def apply_state_dict(state, sd: dict) -> None:
    """Load ``sd`` (checked by :func:`check_config`) into a state bound to its group."""
    if sd.get("kind") == "all_ranks":
        if sd["world_size"] != state.world_size:
            raise CheckpointError(f"gradpack.ddp: the checkpoint holds {sd['world_size']} "
                                  f"ranks' states, this run has {state.world_size} ranks")
        sd = sd["ranks"][state.rank]
    if sd["rank"] != state.rank:
        raise CheckpointError(
            f"gradpack.ddp: this checkpoint holds rank {sd['rank']}'s error-feedback state "
            f"and is being loaded on rank {state.rank}; each rank must load its own (or save "
            "with state_dict(all_ranks=True), which every rank can load)"
        )
    if sd["world_size"] != state.world_size:
        raise CheckpointError(f"gradpack.ddp: the checkpoint is from a run of "
                              f"{sd['world_size']} ranks, this run has {state.world_size}")
    units = []
    for u in sd["units"]:
        unit_state = {k: (v.to(state.device) if isinstance(v, torch.Tensor) else v)
                      for k, v in u["state"].items()}
        units.append(Unit(tuple(int(p) for p in u["params"]), tuple(int(m) for m in u["numels"]),
                          unit_state))
    state.units.units = units
    state.step = int(sd["step"])
    if sd.get("ledger") is not None:
        state.ledger.load_state_dict(sd["ledger"])
    state.stats.load(sd.get("stats") or {})
    state.failed = None
    state.round = None
    known = range(len(state.param_numels))
    if known:
        state._check_loaded_numels(list(known))
