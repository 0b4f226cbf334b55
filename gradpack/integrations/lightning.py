"""Lightning: a ``DDPStrategy`` that runs a gradpack algorithm as its comm hook.

::

    from gradpack.algorithms import from_spec
    from gradpack.integrations.lightning import GradpackDDPStrategy

    strategy = GradpackDDPStrategy(from_spec("ef21-sgdm", "topk:0.01", eta=0.1))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=4)
    trainer.fit(model)                        # checkpoints hold the error-feedback state
    trainer.fit(model, ckpt_path="last.ckpt") # resumes it, bit-identically

Lightning's own ``DDPStrategy(ddp_comm_hook=...)`` registers hooks on CUDA only (silently
not on CPU) and before gradpack's state can know the model; this strategy registers
:func:`gradpack.ddp.register` on every device, after wrapping. Its ``save_checkpoint`` (every
rank calls it) adds the gathered state under :data:`CHECKPOINT_KEY`; its ``load_checkpoint``
hands it to the hook, which applies it when registered (Lightning restores before it wraps
the model). Other ``DDPStrategy`` arguments pass through (``bucket_cap_mb``,
``find_unused_parameters``, ``static_graph``, ...).

Built on ``lightning.pytorch`` when installed, else ``pytorch_lightning``;
:func:`strategy_class` makes the class for the other package.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Any

import gradpack.ddp

CHECKPOINT_KEY = "gradpack_ddp_hook"


def strategy_class(package: str = "lightning.pytorch") -> type:
    """The strategy class subclassing ``<package>.strategies.DDPStrategy``."""
    base = importlib.import_module(f"{package}.strategies").DDPStrategy

    class GradpackDDPStrategy(base):
        """``DDPStrategy`` running ``algorithm`` as its comm hook, state in checkpoints."""

        strategy_name = "gradpack_ddp"

        def __init__(self, algorithm, *, nonfinite: str = "raise", **kwargs: Any):
            for key in ("ddp_comm_hook", "ddp_comm_state", "ddp_comm_wrapper"):
                if kwargs.get(key) is not None:
                    raise ValueError(f"GradpackDDPStrategy registers gradpack's hook itself; "
                                     f"{key} cannot be combined with it")
            super().__init__(**kwargs)
            self.gradpack_state, _ = gradpack.ddp.hook(algorithm, nonfinite=nonfinite)

        def configure_ddp(self) -> None:
            super().configure_ddp()  # wraps the model (no Lightning hook: none was given)
            # on every device (Lightning's own hooks go on CUDA only), after wrapping
            state = self.gradpack_state
            gradpack.ddp.register(self.model, state.algorithm, nonfinite=state.nonfinite,
                                  state=state)

        def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options=None
                            ) -> None:
            checkpoint[CHECKPOINT_KEY] = self.gradpack_state.state_dict(all_ranks=True)
            super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

        def load_checkpoint(self, checkpoint_path, *args, **kwargs) -> dict[str, Any]:
            checkpoint = super().load_checkpoint(checkpoint_path, *args, **kwargs)
            saved = checkpoint.get(CHECKPOINT_KEY)
            if saved is None:
                warnings.warn(f"gradpack: {checkpoint_path} holds no gradpack hook state; the "
                              "error-feedback state starts from zero", RuntimeWarning,
                              stacklevel=2)
            else:
                self.gradpack_state.load_state_dict(saved)
            return checkpoint

    GradpackDDPStrategy.__qualname__ = GradpackDDPStrategy.__name__
    GradpackDDPStrategy.__module__ = __name__
    return GradpackDDPStrategy


def _default_package() -> str:
    for package in ("lightning.pytorch", "pytorch_lightning"):
        if importlib.util.find_spec(package.split(".")[0]) is not None:
            return package
    raise ImportError("gradpack.integrations.lightning needs Lightning: pip install lightning")


GradpackDDPStrategy = strategy_class(_default_package())

__all__ = ["CHECKPOINT_KEY", "GradpackDDPStrategy", "strategy_class"]
