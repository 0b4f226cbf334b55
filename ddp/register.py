"""``register(ddp_model, algorithm)``: check the ranks agree, then install the hook."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checks import check_same_config
from .hook import gradpack_hook
from .state import HookState


def register(ddp_model: DistributedDataParallel, algorithm, *, process_group=None,
             nonfinite: str = "raise", state: HookState | None = None) -> HookState:
    """Register ``algorithm`` as ``ddp_model``'s comm hook and return its :class:`HookState`.

    Collective: every rank must call it. All ranks check they agree on the algorithm, its
    compressor spec, hyperparameters and seed, the world size, the non-finite policy and the
    model's parameters (names, shapes, dtypes); any difference raises
    :class:`~gradpack.ddp.ConfigMismatchError` on every rank, naming it.

    ``state``: a :class:`HookState` to continue (e.g. unpickled); its algorithm is replaced by
    ``algorithm`` only if their configurations agree.
    """
    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(f"gradpack.ddp.register needs a DistributedDataParallel model, got "
                        f"{type(ddp_model).__name__}")
    if not dist.is_initialized():
        raise RuntimeError("gradpack.ddp.register: torch.distributed is not initialized")
    named = [(name, p) for name, p in ddp_model.module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("gradpack.ddp.register: the model has no trainable parameters")
    rank, n = dist.get_rank(process_group), dist.get_world_size(process_group)
    device = named[0][1].device
    hook_state = HookState(algorithm, rank=rank, world_size=n,
                           param_names=[name for name, _ in named], device=device,
                           nonfinite=nonfinite, process_group=process_group)
    if state is not None:
        hook_state.load_state_dict(state.state_dict())
    hook_state.attach([p for _, p in named])
    config = hook_state.config()
    config["parameters"] = [(name, list(p.shape), str(p.dtype)) for name, p in named]
    check_same_config(config, process_group, _collective_device(device, process_group))
    ddp_model.register_comm_hook(hook_state, gradpack_hook)
    return hook_state


def _collective_device(device: torch.device, group) -> torch.device:
    backend = dist.get_backend(group)
    if backend == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device
