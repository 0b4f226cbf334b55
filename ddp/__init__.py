"""gradpack.ddp: run any gradpack algorithm as a DDP comm hook.

::

    model = DDP(net)
    state = gradpack.ddp.register(model, gradpack.algorithms.from_spec("ef21", topk))
    ...  # train as usual with torch.optim.SGD(model.parameters(), lr)
    torch.save(state.state_dict(all_ranks=True), "hook.pt")   # collective; rank 0 saves
    state.load_state_dict(torch.load("hook.pt"))              # every rank, its own part

or, before the model is wrapped (frameworks that register hooks themselves)::

    state, hook = gradpack.ddp.hook(algorithm)
    model = DDP(net); model.register_comm_hook(state, hook)

See :mod:`.hook` for the data path, :mod:`.state` for how the state binds itself to the
model, :mod:`.layout` for how error-feedback state survives DDP's bucket rebuild
(compression starts at step 0, unlike PyTorch's PowerSGD hook), :mod:`.checkpoint` for the
checkpoint format and :mod:`.checks` for the per-bucket headers.

Mapping onto DDP + optimizer: the hook writes the algorithm's dense ``direction`` into the
bucket, so ``p.grad`` holds it when ``optimizer.step()`` runs; plain SGD (no momentum,
no weight decay) then applies exactly the algorithm's update ``x <- x - lr * direction``.
Other optimizers treat the direction as a gradient (EF21-SGDM already has its momentum
inside). Server state (EF21's ``g``, DORE's ``x``, ``h``, ``e``) is replicated on every rank,
updated from the same gathered bytes, so the ranks stay bit-identical without a broadcast.
DORE compresses the *model residual*: its direction is ``-beta * q_hat / lr`` with ``lr``
its own hyperparameter, so SGD's step with that same ``lr`` makes the model follow
``x_hat <- x_hat + beta * q_hat`` exactly; use plain SGD with DORE's ``lr``.

Non-finite gradients (policy ``nonfinite``): each rank flags its own bucket in the header,
so every rank learns of it in the same collective. ``"raise"`` (default): every rank raises
:class:`~gradpack.errors.NonFiniteGradientError` naming the bucket, its parameters, the step
and the ranks; the hook then refuses to run until a checkpoint is loaded. ``"skip"``: the
step is skipped for that bucket on every rank (zero direction) and each rank's
error-feedback state is restored to its value before the step; ``state.stats.skipped``
records it.

A dead peer makes the pending all-gather fail (gloo: at once when the connection drops,
otherwise at the process-group timeout); the hook raises
:class:`~gradpack.errors.PeerFailureError` naming the bucket and step.
"""

from gradpack.errors import (
    CheckpointError,
    ConfigMismatchError,
    HeaderMismatchError,
    HookStateError,
    LayoutError,
    NonFiniteGradientError,
    PeerFailureError,
)

from .hook import gradpack_hook
from .register import hook, register
from .state import NONFINITE_POLICIES, HookState

__all__ = [
    "NONFINITE_POLICIES",
    "CheckpointError",
    "ConfigMismatchError",
    "HeaderMismatchError",
    "HookState",
    "HookStateError",
    "LayoutError",
    "NonFiniteGradientError",
    "PeerFailureError",
    "gradpack_hook",
    "hook",
    "register",
]
