"""Model averaging for a plain PyTorch training loop, like
``torch.distributed.algorithms.model_averaging``: call :meth:`ModelAverager.step` after
``optimizer.step()``, any optimizer. The averaging is a gradpack model-per-worker algorithm
(:mod:`gradpack.algorithms.peer`), so it is compressed, counted in a ledger and the same code
the simulator runs::

    averager = ModelAverager(model, "local-sgd", "topk:0.1", local_steps=8)   # FedAvg
    averager = ModelAverager(model, "dsgd", "identity", graph="one-peer-exp")  # BlueFog-style
    averager = ModelAverager(model, "choco-sgd", "sign", graph="ring", gamma=0.3)
    averager = ModelAverager(model, "scaffold", "identity", local_steps=8)
    averager = ModelAverager(model, "gradient-tracking", graph="exp")
    for batch in data:
        loss(model(batch)).backward()
        averager.pre_step()      # SCAFFOLD and gradient tracking only (a no-op for the rest)
        optimizer.step(); optimizer.zero_grad()
        averager.step()

The optimizer's step is the local update ``x_i^(k+1/2)``; :meth:`step` runs the round's
exchanges (periodic average over all ranks, or gossip with the graph's neighbours by
point-to-point messages) and writes the mixed model back. Methods that change the local
update itself need :meth:`pre_step` between ``backward()`` and ``optimizer.step()``: it
replaces the gradients by SCAFFOLD's corrected ``g - c_i + c``, or by gradient tracking's
tracker ``y_i`` (after its first exchange). With plain SGD the iterates are the simulator's
bit for bit; with another optimizer the direction goes through that optimizer.

Without ``torch.distributed`` initialised the averager runs one worker (nothing to average).
For the periodic average every rank starts from rank 0's parameters (broadcast once).
``state_dict()`` / ``load_state_dict()`` hold the step counter and the algorithm state
(tensors and plain values: a default ``torch.load`` reads them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from gradpack.algorithms import PeerAlgorithm, from_spec
from gradpack.algorithms.peer_round import run_phase
from gradpack.comm import Ledger, LocalTransport, ProcessGroupTransport
from gradpack.comm.p2p import LocalExchange, ProcessGroupExchange

#: algorithms whose local step is not the optimizer's step on the raw gradient
NEEDS_PRE_STEP = ("scaffold", "gradient-tracking")


class ModelAverager:
    """See the module docstring. ``algorithm``: a :class:`PeerAlgorithm` or its name (then
    ``compressor`` and ``hparams`` go to :func:`gradpack.algorithms.from_spec`)."""

    def __init__(self, params: torch.nn.Module | Iterable[torch.Tensor],
                 algorithm: PeerAlgorithm | str, compressor: str = "identity", *,
                 process_group: dist.ProcessGroup | None = None, **hparams: Any):
        if isinstance(algorithm, str):
            algorithm = from_spec(algorithm, compressor, **hparams)
        elif hparams:
            raise ValueError("hparams go with an algorithm name, not an Algorithm object")
        if not isinstance(algorithm, PeerAlgorithm):
            raise ValueError(f"ModelAverager runs model-per-worker algorithms (local-sgd, "
                             f"scaffold, dsgd, gradient-tracking, choco-sgd); "
                             f"{getattr(algorithm, 'name', algorithm)!r} is a "
                             "gradient method: use gradpack.ddp.register")
        self.params = list(params.parameters() if isinstance(params, torch.nn.Module)
                           else params)
        if not self.params:
            raise ValueError("ModelAverager: no parameters")
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.float64}:
            raise ValueError(f"ModelAverager: parameters must all be float32 (or all float64), "
                             f"got {sorted(map(str, dtypes))}")
        self.algorithm = algorithm
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size(process_group) if distributed else 1
        self.ledger = Ledger(world, keep_history=False)
        if distributed:
            self.rank = dist.get_rank(process_group)
            self.transport = ProcessGroupTransport(process_group, ledger=self.ledger)
            self.exchange = ProcessGroupExchange(process_group, ledger=self.ledger)
        else:
            self.rank = 0
            self.transport = LocalTransport(1, ledger=self.ledger)
            self.exchange = LocalExchange(1, ledger=self.ledger)
        x0 = parameters_to_vector(self.params).detach()
        graph = algorithm.graph_for(world)
        if distributed:
            if graph is not None:
                self.exchange.check_graph(graph)  # mismatched graphs: a clear error
            else:  # a periodic average needs one starting model
                src = 0 if process_group is None else dist.get_global_rank(process_group, 0)
                dist.broadcast(x0, src=src, group=process_group)
                vector_to_parameters(x0, self.params)
        self.state = algorithm.init_state(x0.numel(), x0.device, world_size=world,
                                          rank=self.rank, dtype=x0.dtype, x0=x0)
        self.step_count = 0
        self._prepared = False

    @torch.no_grad()
    def pre_step(self) -> None:
        """Between ``backward()`` and ``optimizer.step()``: replace the gradients by the
        algorithm's step direction (SCAFFOLD, gradient tracking; the raw gradient otherwise)."""
        alg, k = self.algorithm, self.step_count
        if alg.name not in NEEDS_PRE_STEP:
            return  # the optimizer steps along the raw gradient
        if any(p.grad is None for p in self.params):
            raise ValueError("ModelAverager.pre_step: every parameter needs a .grad (call it "
                             "after backward())")
        grad = parameters_to_vector([p.grad for p in self.params]).to(self.state["x"].dtype)
        self.ledger.begin_step(k)
        if alg.pre_phases:  # gradient tracking: y <- W (y + g - g_prev), then step along y
            alg.local_update(self.state, grad, step=k, lr=0.0)
            for phase in range(alg.pre_phases):
                run_phase(alg, self.transport, self.exchange, [self.state], step=k,
                          phase=phase, lr=0.0)
            direction = self.state["y"]
        else:
            direction = alg.direction(self.state, grad, step=k)
        vector_to_parameters(direction, [p.grad for p in self.params])
        self._prepared = True

    @torch.no_grad()
    def step(self) -> bool:
        """After ``optimizer.step()``: run this iteration's exchanges (if any) and write the
        mixed model back. Returns whether the parameters changed."""
        alg, k = self.algorithm, self.step_count
        if alg.name in NEEDS_PRE_STEP and not self._prepared:
            raise ValueError(f"{alg.name}: call averager.pre_step() between backward() and "
                             "optimizer.step() (it corrects the gradients)")
        self._prepared = False
        self.step_count += 1
        self.ledger.begin_step(k)
        phases = alg.phases(k)[alg.pre_phases:]
        if not phases:
            return False
        self.state["x"].copy_(parameters_to_vector(self.params))
        for phase in range(alg.pre_phases, alg.pre_phases + len(phases)):
            run_phase(alg, self.transport, self.exchange, [self.state], step=k, phase=phase,
                      lr=0.0)
        vector_to_parameters(self.state["x"], self.params)
        return True

    def state_dict(self) -> dict[str, Any]:
        keys = self.algorithm.worker_state
        return {"step": self.step_count, "algorithm": repr(self.algorithm),
                "state": {k: self.state[k].clone() for k in keys}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("algorithm") != repr(self.algorithm):
            raise ValueError(f"ModelAverager: checkpoint is for {sd.get('algorithm')}, this "
                             f"averager runs {self.algorithm!r}")
        for k in self.algorithm.worker_state:
            t = sd["state"][k]
            if t.shape != self.state[k].shape:
                raise ValueError(f"ModelAverager: checkpoint's {k!r} has {t.numel()} "
                                 f"elements, the model {self.state[k].numel()}")
            self.state[k].copy_(t)
        self.step_count = int(sd["step"])
