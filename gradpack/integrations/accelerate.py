"""accelerate: register the hook on the model ``prepare`` wrapped, state in
``save_state`` / ``load_state``.

::

    accelerator = Accelerator()
    model, optimizer, data = accelerator.prepare(model, optimizer, data)
    state = gradpack.integrations.accelerate.register(accelerator, model, algorithm)
    ...
    accelerator.save_state("ckpt")   # every rank; rank 0 writes the hook state of all ranks
    accelerator.load_state("ckpt")   # every rank gets its own error-feedback state back

accelerate's ``DistributedDataParallelKwargs(comm_hook=...)`` takes only its built-in hooks,
so the hook goes on after ``prepare``. ``register_for_checkpointing`` saves the state
returned by the object's ``state_dict()`` on the main process only; the object registered
here returns the gathered form (``state_dict(all_ranks=True)``: every rank calls it inside
``save_state``, rank 0 gets every rank's state), and each rank loads its own part.
"""

from __future__ import annotations

import warnings

from torch.nn.parallel import DistributedDataParallel

import gradpack.ddp
from gradpack.ddp import HookState


class AllRanksState:
    """A hook state as accelerate checkpoints it: ``state_dict`` is the collective form."""

    def __init__(self, state: HookState):
        self.state = state

    def state_dict(self) -> dict:
        return self.state.state_dict(all_ranks=True)

    def load_state_dict(self, sd: dict) -> None:
        self.state.load_state_dict(sd)


def register(accelerator, model, algorithm, *, nonfinite: str = "raise",
             checkpoint: bool = True) -> HookState | None:
    """Register ``algorithm`` on the DDP model ``accelerator.prepare`` returned (collective:
    every rank calls it) and, with ``checkpoint``, its state for ``save_state`` /
    ``load_state``. Returns the hook's state; ``None`` (with a warning) in a single-process
    run, where there is nothing to compress."""
    if accelerator.num_processes == 1:
        warnings.warn("gradpack: one process, no gradient communication to compress; the "
                      "hook is not registered", RuntimeWarning, stacklevel=2)
        return None
    if not isinstance(model, DistributedDataParallel):
        raise TypeError(
            f"gradpack.integrations.accelerate.register needs the model returned by "
            f"accelerator.prepare, wrapped in DistributedDataParallel; got "
            f"{type(model).__name__} (FSDP and DeepSpeed do their own communication)")
    state = gradpack.ddp.register(model, algorithm, nonfinite=nonfinite)
    if checkpoint:
        accelerator.register_for_checkpointing(AllRanksState(state))
    return state


__all__ = ["AllRanksState", "register"]
