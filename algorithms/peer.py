"""The contract of methods whose workers keep their own models (seeds 000 and 001): local
SGD/FedAvg and SCAFFOLD (talk less often), DSGD, gradient tracking and CHOCO-SGD (talk to
fewer peers). One definition serves the simulator and ``torch.distributed``
(:func:`.peer_round.peer_round` over any transport and neighbour exchange).

Each rank's state holds its model ``x`` (``x_i`` of the seeds) in the state dtype. A local
iteration ``k`` is::

    alg.local_update(state, grad_i(x_i), step=k, lr=lr)                   # compute only
    for phase, kind in enumerate(alg.phases(k)):                          # () between rounds
        payload = alg.message(state, step=k, phase=phase, rank=i, lr=lr)  # packed uint8
        kind "average": the payloads of all n ranks (all-gather)
        kind "gossip":  the payloads of the in-neighbours of graph(k) (point-to-point)
        alg.combine(state, received, senders, step=k, phase=phase, lr=lr, w_self=, w=)

The local update is ``x_i <- x_i - lr * alg.direction(state, grad)`` (SCAFFOLD corrects the
gradient there); gradient tracking's first exchange (``pre_phases = 1``) mixes its tracker
before the step, which then follows the tracker.

Messages are compressed with the algorithm's compressor and seeded by
``seed_for(step, sender, 2 * stream + phase)``, so every receiver decodes what the sender
meant. ``w_self`` and ``w`` are the mixing weights (``1/n`` and ``1/n`` for an average, the
graph's ``w_ii`` and ``w_ij`` for gossip).

Each public hook checks its scalars (``lr`` a real number in ``[0, inf)``, the weights in
``[0, 1]``: ``ValueError``) and is a transaction (:mod:`.base`): the subclass's
``_local`` / ``_combine`` compute the new state tensors into scratch, :meth:`_commit` checks
them finite (one ``aminmax`` each, one host read; :class:`~gradpack.errors.NonFiniteError`
otherwise, with no state changed) and writes them; a message's fused pass snapshots the one
tensor it updates (:meth:`.base.Algorithm._compress`). ``local_steps`` is an int in
``[1, inf)`` (seed 000: K local updates per round).
"""

from __future__ import annotations

from typing import Any

import torch

from gradpack.comm import graphs
from gradpack.compressors import Compressor

from . import checks
from .base import Algorithm

KINDS = ("average", "gossip")


class PeerAlgorithm(Algorithm):
    """Base class. Subclasses set ``worker_state`` (``"x"`` first), ``kind`` and
    ``phase_count`` and implement :meth:`local_update`, :meth:`message`, :meth:`combine`."""

    #: "average" (periodic global averaging) or "gossip" (neighbour exchange over ``graph``)
    kind: str = "gossip"
    #: exchanges per communication round (gradient tracking and SCAFFOLD send two)
    phase_count: int = 1
    #: state tensors that start as ``x0`` (the others start at zero)
    model_copies: tuple[str, ...] = ("x",)
    #: exchanges that must happen before the local step (gradient tracking mixes y first)
    pre_phases: int = 0

    def __init__(self, compressor: Compressor, *, graph: str | graphs.Graph | None = None,
                 local_steps: int = 1, seed: int = 0):
        local_steps = checks.integer(self.name, "local_steps", local_steps, "[1, inf)")
        if self.kind == "average" and graph is not None:
            raise ValueError(f"{self.name} averages over all workers and takes no graph (use "
                             "dsgd with local_steps for gossip with local updates)")
        if self.kind == "gossip" and graph is None:
            graph = "ring"
        if graph is not None and not isinstance(graph, str | graphs.Graph):
            raise ValueError(f"{self.name}: graph must be a spec string or a Graph, got "
                             f"{type(graph).__name__}")
        self.graph, self.local_steps = graph, local_steps
        super().__init__(compressor, seed=seed)

    @property
    def hparams(self) -> dict[str, Any]:
        g = self.graph.name if isinstance(self.graph, graphs.Graph) else self.graph
        out = {"local_steps": self.local_steps}
        return out if g is None else {"graph": g, **out}

    def graph_for(self, n: int) -> graphs.Graph | None:
        """The graph on ``n`` nodes (``None`` for averaging methods)."""
        return None if self.graph is None else graphs.from_spec(self.graph, n)

    def phases(self, step: int) -> tuple[str, ...]:
        """The exchanges after local iteration ``step``: one round every ``local_steps``."""
        if (step + 1) % self.local_steps:
            return ()
        return (self.kind,) * self.phase_count

    # -- state ----------------------------------------------------------------------------
    def init_state(self, numel: int, device: torch.device | str = "cpu", *, world_size: int,
                   rank: int = 0, dtype: torch.dtype = torch.float32,
                   x0: torch.Tensor | None = None) -> dict[str, Any]:
        """Rank ``rank``'s state: the model copies start at ``x0`` (zeros if ``None``)."""
        state = super().init_state(numel, device, world_size=world_size, rank=rank,
                                   dtype=dtype)
        self.graph_for(world_size)  # a graph of the wrong size fails here, not mid-run
        if x0 is not None:
            if not isinstance(x0, torch.Tensor) or x0.numel() != numel:
                raise ValueError(f"{self.name}: x0 must be a tensor of {numel} elements")
            for key in self.model_copies:
                state[key].copy_(x0.reshape(-1))
        return state

    # -- the hooks (public: check, run the subclass's part, commit) -----------------------
    def local_update(self, state: dict[str, Any], grad: torch.Tensor, *, step: int,
                     lr: float) -> None:
        """``x_i <- x_i - lr * direction`` with :meth:`direction`'s step direction."""
        lr = self._lr(lr)
        new = self._local(state, self._grad(state, grad), step=step, lr=lr)
        self._commit(state, new, f"local update at step {step}")

    def direction(self, state: dict[str, Any], grad: torch.Tensor, *,
                  step: int) -> torch.Tensor:
        """The local step's direction from the gradient (updating any per-step state): the
        gradient itself here, SCAFFOLD's corrected one. The model averager hands it to the
        caller's optimizer."""
        d, new = self._direction(state, self._grad(state, grad), step=step)
        self._commit(state, new, f"direction at step {step}", direction=d)
        return d

    def message(self, state: dict[str, Any], *, step: int, phase: int, rank: int, lr: float,
                stream: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rank ``rank``'s packed message of exchange ``phase`` after iteration ``step``."""
        self._lr(lr)
        self.check_state(state)
        return self._message(state, step=step, phase=phase, rank=rank, stream=stream, out=out)

    def combine(self, state: dict[str, Any], received: torch.Tensor, senders: list[int], *,
                step: int, phase: int, lr: float, w_self: float, w: float,
                stream: int = 0) -> None:
        """Mix the ``received`` payloads (one row per sender) into ``state``."""
        lr = self._lr(lr)
        w_self = checks.real(self.name, "w_self", w_self, "[0, 1]")
        w = checks.real(self.name, "w", w, "[0, 1]")
        self.check_state(state)
        if not isinstance(received, torch.Tensor) or received.dim() != 2:
            raise ValueError(f"{self.name}: received payloads must be a 2-D tensor")
        new = self._combine(state, received, list(senders), step=step, phase=phase, lr=lr,
                            w_self=w_self, w=w, stream=stream)
        self._commit(state, new, f"combine at step {step} (phase {phase})")

    # -- what subclasses implement: new state values, computed into scratch ---------------
    def _direction(self, state: dict[str, Any], grad: torch.Tensor, *,
                   step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The direction and the new values of the state it updates (not yet written)."""
        return grad, {}

    def _local(self, state: dict[str, Any], grad: torch.Tensor, *, step: int,
               lr: float) -> dict[str, torch.Tensor]:
        d, new = self._direction(state, grad, step=step)
        return {**new, "x": torch.sub(state["x"], d, alpha=lr)}

    def _message(self, state: dict[str, Any], *, step: int, phase: int, rank: int,
                 stream: int, out: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _combine(self, state: dict[str, Any], received: torch.Tensor, senders: list[int], *,
                 step: int, phase: int, lr: float, w_self: float, w: float,
                 stream: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------
    def phase_seed(self, step: int, rank: int, phase: int, stream: int = 0) -> int:
        return self.seed_for(step, rank, 2 * stream + phase)

    def _lr(self, lr) -> float:
        return checks.real(self.name, "lr", lr, "[0, inf)")

    def _grad(self, state: dict[str, Any], grad) -> torch.Tensor:
        numel, _ = self.check_state(state)
        if not isinstance(grad, torch.Tensor) or grad.numel() != numel:
            got = grad.numel() if isinstance(grad, torch.Tensor) else type(grad).__name__
            raise ValueError(f"{self.name}: gradient must be a tensor of {numel} elements, "
                             f"got {got}")
        return grad.reshape(-1).to(state["x"].dtype)

    def _commit(self, state: dict[str, Any], new: dict[str, torch.Tensor], what: str,
                **also: torch.Tensor) -> None:
        """Write the ``new`` state values once they (and ``also``) are known finite."""
        self._require_finite(what, **new, **also)
        for key, value in new.items():
            if value is not state[key]:
                state[key].copy_(value)

    def _encode(self, fusion, src, tensors, state, *, step, phase, rank, stream, out):
        return self._compress(self.compressor, fusion, src, tensors,
                              seed=self.phase_seed(step, rank, phase, stream), out=out,
                              dtype=self.state_dtype(state), state=state,
                              what=f"message of rank {rank} at step {step} (phase {phase})")

    def _mix_into(self, target: torch.Tensor, received: torch.Tensor, senders: list[int], *,
                  step: int, phase: int, stream: int, scale: float) -> torch.Tensor:
        """``target += scale * sum_j C_j`` over the received payloads."""
        if received.shape[0] != len(senders):
            raise ValueError(f"{self.name}: {received.shape[0]} payloads from "
                             f"{len(senders)} senders")
        if not senders:
            return target
        seeds = [self.phase_seed(step, j, phase, stream) for j in senders]
        return self._decode_into(self.compressor, received, target.numel(), seeds, out=target,
                                 scale=scale, add=True, dtype=target.dtype)

    def worker_step(self, *args, **kwargs):
        raise ValueError(f"{self.name} keeps a model per worker: run it with "
                         "gradpack.algorithms.peer_round (the simulator does), not worker_step")

    def aggregate(self, *args, **kwargs):
        raise ValueError(f"{self.name} keeps a model per worker: run it with "
                         "gradpack.algorithms.peer_round, not aggregate")
