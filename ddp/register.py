"""Two ways to install the hook: :func:`hook` before DDP exists, :func:`register` on a DDP
model."""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gradpack.comm.distributed import check_same_config
from gradpack.comm.ledger import Ledger
from gradpack.errors import ConfigMismatchError

from .hook import gradpack_hook
from .state import HookState


def hook(algorithm, *, nonfinite: str = "raise", process_group=None,
         state_dict: dict | None = None, ledger: Ledger | None = None,
         transactional: bool = True) -> tuple[HookState, Callable]:
    """``(state, hook)`` for ``ddp_model.register_comm_hook(state, hook)``, buildable before
    the model is wrapped (or the process group exists), for frameworks that register hooks
    themselves. The state binds itself to the model's parameters, rank and world size when
    the hook first runs, and runs the cross-rank config check then. ``state_dict``: a saved
    hook state to continue from (also ``state.load_state_dict`` any time before or after).
    ``ledger``: where the hook records its bits (default: ``Ledger(world_size)``, history in
    memory; ``Ledger(n, keep_history=False, log=JsonLinesLog(path))`` for long runs).
    """
    state = HookState(algorithm, nonfinite=nonfinite, process_group=process_group,
                      ledger=ledger, transactional=transactional)
    if state_dict is not None:
        state.load_state_dict(state_dict)
    return state, gradpack_hook


def bucket_limits(ddp_model: DistributedDataParallel) -> list[int]:
    """The byte caps DDP's bucket rebuild uses (its first bucket's, then every later one's):
    the units the hook compresses are cut with them (:meth:`.layout.UnitTable.bind`)."""
    cfg = getattr(ddp_model, "_bucket_config", None)
    if cfg is not None:
        if cfg.per_bucket_bytes_caps:
            return [int(c) for c in cfg.per_bucket_bytes_caps]
        return [int(cfg.first_bucket_bytes_cap), int(cfg.bucket_bytes_cap)]
    return [dist._DEFAULT_FIRST_BUCKET_BYTES, int(ddp_model.bucket_bytes_cap)]


def register(ddp_model: DistributedDataParallel, algorithm, *, process_group=None,
             nonfinite: str = "raise", state: HookState | None = None,
             ledger: Ledger | None = None, transactional: bool = True) -> HookState:
    """Register ``algorithm`` as ``ddp_model``'s comm hook and return its :class:`HookState`.

    Collective: every rank must call it. All ranks check they agree on the algorithm, its
    compressor spec, hyperparameters and seed, the world size, the non-finite policy and the
    model's parameters (names, shapes, dtypes); any difference raises
    :class:`~gradpack.errors.ConfigMismatchError` on every rank, naming it.

    ``state``: a :class:`HookState` to continue (from :func:`hook`, unpickled, or loaded
    from a checkpoint before the model was wrapped); it is used, not copied, if its
    configuration agrees with ``algorithm``'s. ``ledger``: as in :func:`hook`.
    """
    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(f"gradpack.ddp.register needs a DistributedDataParallel model, got "
                        f"{type(ddp_model).__name__}; before wrapping, use "
                        "`state, hook = gradpack.ddp.hook(algorithm)`")
    if not dist.is_initialized():
        raise RuntimeError("gradpack.ddp.register: torch.distributed is not initialized")
    named = [(name, p) for name, p in ddp_model.module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("gradpack.ddp.register: the model has no trainable parameters")
    if state is None:
        state = HookState(algorithm, nonfinite=nonfinite, process_group=process_group,
                          ledger=ledger, transactional=transactional)
    else:
        fresh = HookState(algorithm, nonfinite=nonfinite, process_group=process_group)
        if fresh.config() != state.config():
            raise ConfigMismatchError(
                f"gradpack.ddp.register: the given state runs {state.config()}, the "
                f"algorithm {fresh.config()}")
        state.algorithm, state.process_group = algorithm, process_group
        state.transactional = bool(transactional)
        state.unbind()
    state.bucket_limits = bucket_limits(ddp_model)
    device = named[0][1].device
    state.bind_group(device)
    state.name_parameters(named)
    config = state.config()
    config["world_size"] = state.world_size
    config["bucket_limits"] = state.bucket_limits
    config["parameters"] = [(name, list(p.shape), str(p.dtype)) for name, p in named]
    check_same_config(config, process_group, device, who="gradpack.ddp")
    state.checked = True
    ddp_model.register_comm_hook(state, gradpack_hook)
    return state
