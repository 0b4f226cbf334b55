"""gradpack in the frameworks people train with; each module imports its framework only
when imported itself (``import gradpack.integrations`` imports none of them).

- :mod:`.lightning`: ``GradpackDDPStrategy``, a Lightning ``DDPStrategy`` that registers the
  hook on CPU (gloo) and GPU and keeps its state in Lightning's checkpoints;
- :mod:`.hf`: ``GradpackCallback``, a Hugging Face ``TrainerCallback`` that registers the
  hook on the Trainer's DDP model and saves/loads its state with the Trainer's checkpoints;
- :mod:`.accelerate`: ``register(accelerator, model, algorithm)`` after ``prepare``, with the
  state in ``save_state`` / ``load_state`` on every rank.

Every one saves the collective form of the state (``state_dict(all_ranks=True)``): one file,
written by rank 0, restores every rank, bit-identically.
"""

__all__ = ["accelerate", "hf", "lightning"]
