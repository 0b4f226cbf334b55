"""Hugging Face ``Trainer``: a callback that runs a gradpack algorithm as the DDP comm hook
and keeps its state in the Trainer's checkpoints.

::

    from gradpack.integrations.hf import GradpackCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[GradpackCallback(from_spec("ef21-sgdm", "topk:0.01"))])
    trainer.train()                                 # checkpoint-N/ holds gradpack_hook.pt
    trainer.train(resume_from_checkpoint=True)      # resumes it, bit-identically

Registration: the Trainer wraps the model in DDP (through accelerate) after the callbacks
are built and does not hand the wrapped model to them, so the callback registers the hook
on the DDP model that runs the model's first forward (``trainer=`` instead takes it from
``trainer.model_wrapped`` at ``on_train_begin``). Checkpoints: at ``on_save`` every rank
joins the gather (``state_dict(all_ranks=True)``) and the process that saves writes
``checkpoint-N/gradpack_hook.pt``; at ``on_train_begin`` of a resumed run (global step > 0)
the callback loads it from ``resume_from`` or ``<output_dir>/checkpoint-<global step>``, and
raises :class:`~gradpack.errors.CheckpointError` if it is not there (pass
``missing="fresh"`` to start the error-feedback state from zero instead).
"""

from __future__ import annotations

import os

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

import gradpack.ddp
from gradpack.errors import CheckpointError, HookStateError

FILENAME = "gradpack_hook.pt"


class GradpackCallback(TrainerCallback):
    """Run ``algorithm`` as the Trainer's DDP comm hook (see the module docstring)."""

    def __init__(self, algorithm, *, nonfinite: str = "raise", trainer=None,
                 resume_from: str | None = None, missing: str = "raise"):
        if missing not in ("raise", "fresh"):
            raise ValueError(f"missing must be 'raise' or 'fresh', got {missing!r}")
        self.state, _ = gradpack.ddp.hook(algorithm, nonfinite=nonfinite)
        self.trainer, self.resume_from, self.missing = trainer, resume_from, missing
        self.registered = False
        self._pre_hook = None

    # -- registration ---------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0 and self.state.step == 0:
            self._load(args, state)
        if self.registered:
            return
        if self.trainer is not None:
            self._register(self.trainer.model_wrapped)
        elif model is not None and self._pre_hook is None:
            self._pre_hook = model.register_forward_pre_hook(self._on_first_forward)

    def _on_first_forward(self, module, inputs):
        active = getattr(DistributedDataParallel, "_get_active_ddp_module", None)
        ddp = active() if active is not None else None
        if ddp is not None:  # a forward outside DDP (evaluation) leaves the pre-hook armed
            self._pre_hook.remove()
            self._register(ddp)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.registered and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:
            raise HookStateError(
                "gradpack GradpackCallback: a training step ran without the hook: the model "
                "was not run inside DistributedDataParallel (FSDP and DeepSpeed do their own "
                "communication); if it was, pass trainer=trainer to the callback")

    def _register(self, ddp) -> None:
        if not isinstance(ddp, DistributedDataParallel):
            return  # one process: nothing to compress
        gradpack.ddp.register(ddp, self.state.algorithm, nonfinite=self.state.nonfinite,
                              state=self.state)
        self.registered = True

    # -- checkpoints ----------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        if not torch.distributed.is_initialized():
            return
        gathered = self.state.state_dict(all_ranks=True)  # collective: every rank is here
        if args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save(gathered, os.path.join(folder, FILENAME))

    def _load(self, args, state) -> None:
        folder = self.resume_from or os.path.join(args.output_dir,
                                                  f"checkpoint-{state.global_step}")
        path = os.path.join(folder, FILENAME)
        if os.path.exists(path):
            self.state.load_state_dict(torch.load(path))
        elif self.missing == "raise":
            raise CheckpointError(
                f"gradpack GradpackCallback: resuming at global step {state.global_step} but "
                f"{path} does not exist, so the error-feedback state would restart from zero; "
                "pass resume_from='<checkpoint folder>' if it is elsewhere, or "
                "missing='fresh' to start it from zero")


__all__ = ["FILENAME", "GradpackCallback"]
