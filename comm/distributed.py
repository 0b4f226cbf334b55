"""The ``torch.distributed`` transport: one rank per process, NCCL on CUDA, gloo on CPU.

Each call issues exactly one collective, from the calling thread (never from a Future
callback), in the same order on every rank. The all-gather is
``all_gather_single`` (``all_gather_into_tensor`` on older torch) of equal-size payloads into
one ``[world_size, P]`` tensor; sizes come from the algorithm (``payload_bytes(numel, step)``),
so no handshake precedes it. A failing collective (a dead peer, a timeout) is re-raised as
:class:`~gradpack.errors.PeerFailureError` naming the operation, this rank and the sizes.

Shared with the DDP hook: :func:`all_gather_into_tensor` (the one all-gather shim) and
:func:`check_same_config` (the one cross-rank config-agreement check: a 32-byte digest per
rank, and only when they differ the configurations themselves, so that every rank raises
:class:`~gradpack.errors.ConfigMismatchError` naming each differing field on every rank).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist

from gradpack.errors import ConfigMismatchError, PeerFailureError

from .ledger import Ledger
from .transport import Pending, Transport


def all_gather_into_tensor(out: torch.Tensor, inp: torch.Tensor, group=None,
                           async_op: bool = False):
    """``out[r * len(inp):(r + 1) * len(inp)] = inp`` of rank r: torch's
    ``all_gather_single`` (``all_gather_into_tensor`` before torch 2.13)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


def exit_worker(queue=None) -> NoReturn:
    """End a spawned worker process whose results are delivered (after its
    ``destroy_process_group``): flush ``queue`` (a multiprocessing queue), stdout and stderr,
    then ``os._exit(0)``. Interpreter finalization can abort the process (SIGABRT, "terminate
    called without an active exception") while gloo's threads still hold objects
    (pytorch/pytorch#190489, #179291); a worker with nothing left to do skips it."""
    if queue is not None:
        queue.close()
        queue.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def collective_device(group=None, device: torch.device | str = "cpu") -> torch.device:
    """Where this group's collectives take their tensors: the current CUDA device under
    NCCL, else ``device``."""
    if dist.get_backend(group) == "nccl" and torch.device(device).type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def digest(config: dict) -> bytes:
    """SHA-256 of a JSON-able config (keys sorted; other values by ``str``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).digest()


def gather_configs_if_different(config: dict, group=None,
                                device: torch.device | str = "cpu") -> list[dict] | None:
    """Collective: ``None`` when every rank passed an equal ``config``, else every rank's
    config (rank order). One 32-byte all-gather; an object all-gather only on a mismatch."""
    n = dist.get_world_size(group)
    device = collective_device(group, device)
    mine = torch.frombuffer(bytearray(digest(config)), dtype=torch.uint8).to(device)
    gathered = torch.empty(n * mine.numel(), dtype=torch.uint8, device=device)
    all_gather_into_tensor(gathered, mine, group)
    rows = gathered.view(n, -1).cpu()
    if all(torch.equal(rows[0], rows[r]) for r in range(1, n)):
        return None
    configs: list = [None] * n
    dist.all_gather_object(configs, config, group=group)
    return configs


def check_same_config(config: dict, group=None, device: torch.device | str = "cpu", *,
                      who: str = "gradpack") -> None:
    """Collective: every rank raises :class:`ConfigMismatchError` if any rank's ``config``
    differs, naming each differing field and its value on every rank."""
    configs = gather_configs_if_different(config, group, device)
    if configs is not None:
        raise ConfigMismatchError(describe_difference(configs, who=who))


def describe_difference(configs: list[dict], labels: list[str] | None = None,
                        what: str = "ranks have different configurations",
                        who: str = "gradpack") -> str:
    """One line per differing field, with each config's value (labelled ``rank r``)."""
    labels = labels or [f"rank {r}" for r in range(len(configs))]
    lines = []
    for key in sorted({k for c in configs for k in c}):
        values = [json.dumps(c.get(key), sort_keys=True, default=str) for c in configs]
        if len(set(values)) > 1:
            each = ", ".join(f"{label}: {_short(v)}"
                             for label, v in zip(labels, values, strict=True))
            lines.append(f"  {key}: {each}")
    return f"{who}: {what}:\n" + "\n".join(lines)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class ProcessGroupTransport(Transport):
    """Collectives over a process group (default: the world). Ranks are group ranks."""

    def __init__(self, group: dist.ProcessGroup | None = None, ledger: Ledger | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("ProcessGroupTransport needs torch.distributed initialised "
                             "(init_process_group); use LocalTransport for one process")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.ranks = (self.rank,)
        super().__init__(ledger)

    def _global(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def _fail(self, op: str, nbytes: int, err: Exception) -> PeerFailureError:
        return PeerFailureError(f"{op} of {nbytes}-byte payloads failed on rank {self.rank} "
                                f"of {self.world_size} ({type(err).__name__}: {err})")

    def all_gather(self, payloads: torch.Tensor, *, async_op: bool = False):
        row = self._rows(payloads, "all_gather")[0]
        p = row.numel()
        flat = torch.empty(self.world_size * p, dtype=torch.uint8, device=row.device)
        out = flat.view(self.world_size, p)  # gloo takes only the concatenated form
        self._record("all_gather", p, lambda r: (self.world_size - 1) * p)
        try:
            work = all_gather_into_tensor(flat, row, self.group, async_op)
        except RuntimeError as err:
            raise self._fail("all_gather", p, err) from err
        if async_op:
            return Pending(out, work)
        return out

    def gather(self, payloads: torch.Tensor, *, dst: int = 0) -> torch.Tensor | None:
        self._check_root(dst, "gather")
        row = self._rows(payloads, "gather")[0]
        p = row.numel()
        out = None
        if self.rank == dst:
            out = torch.empty(self.world_size, p, dtype=torch.uint8, device=row.device)
        self._record("gather", p, lambda r: (self.world_size - 1) * p if r == dst else 0)
        try:
            dist.gather(row, list(out.unbind(0)) if out is not None else None,
                        dst=self._global(dst), group=self.group)
        except RuntimeError as err:
            raise self._fail("gather", p, err) from err
        return out

    def broadcast(self, payload: torch.Tensor | None, *, src: int = 0, nbytes: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
        """``device`` places the receive buffer (default: CUDA under NCCL, else CPU)."""
        self._check_root(src, "broadcast")
        if self.rank == src:
            if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 \
                    or payload.dim() != 1 or payload.numel() != nbytes:
                raise ValueError(f"broadcast: the root's payload must be a 1-D uint8 tensor "
                                 f"of {nbytes} bytes")
            buf = payload.contiguous()
        else:
            if device is None:
                nccl = dist.get_backend(self.group) == "nccl"
                device = torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu"
            buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self._record("broadcast", nbytes, lambda r: 0 if r == src else nbytes)
        try:
            dist.broadcast(buf, src=self._global(src), group=self.group)
        except RuntimeError as err:
            raise self._fail("broadcast", nbytes, err) from err
        return buf

    def check_same(self, **values: int) -> None:
        """Raise ``ValueError`` unless every rank passes the same ints (e.g. ``numel``),
        naming the keys and each rank's value (:func:`check_same_config` underneath)."""
        configs = gather_configs_if_different({k: int(v) for k, v in values.items()},
                                              self.group)
        if configs is not None:
            raise ValueError(describe_difference(configs, what="ranks disagree"))
