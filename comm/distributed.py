"""The ``torch.distributed`` transport: one rank per process, NCCL on CUDA, gloo on CPU.

Each call issues exactly one collective, from the calling thread (never from a Future
callback), in the same order on every rank. The all-gather is
``all_gather_single`` (``all_gather_into_tensor`` on older torch) of equal-size payloads into
one ``[world_size, P]`` tensor; sizes come from the algorithm (``payload_bytes(numel, step)``),
so no handshake precedes it. A failing collective (a dead peer, a timeout) is re-raised as a
``RuntimeError`` that names the operation, this rank and the sizes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .ledger import Ledger
from .transport import Pending, Transport

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


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

    def _fail(self, op: str, nbytes: int, err: Exception) -> RuntimeError:
        return RuntimeError(f"{op} of {nbytes}-byte payloads failed on rank {self.rank} of "
                            f"{self.world_size} ({type(err).__name__}: {err})")

    def all_gather(self, payloads: torch.Tensor, *, async_op: bool = False):
        row = self._rows(payloads, "all_gather")[0]
        p = row.numel()
        flat = torch.empty(self.world_size * p, dtype=torch.uint8, device=row.device)
        out = flat.view(self.world_size, p)  # gloo takes only the concatenated form
        self._record("all_gather", p, lambda r: (self.world_size - 1) * p)
        try:
            work = _all_gather_single(flat, row, group=self.group, async_op=async_op)
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
        """Raise ``ValueError`` unless every rank passes the same ints (config agreement:
        algorithm, compressor spec hash, numel, ...), naming the keys and ranks that differ."""
        keys = sorted(values)
        mine = torch.tensor([int(values[k]) for k in keys], dtype=torch.int64)
        if dist.get_backend(self.group) == "nccl":
            mine = mine.cuda()
        out = torch.empty(self.world_size * len(keys), dtype=torch.int64, device=mine.device)
        _all_gather_single(out, mine, group=self.group)
        out = out.cpu().view(self.world_size, len(keys))
        for j, k in enumerate(keys):
            col = out[:, j]
            if not bool((col == col[0]).all()):
                raise ValueError(f"ranks disagree on {k!r}: {dict(enumerate(col.tolist()))}")
