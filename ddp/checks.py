"""Cross-rank safety: config agreement at registration, per-bucket headers, clear errors.

At registration every rank all-gathers a 32-byte SHA-256 digest of its configuration
(algorithm, compressor spec, hyperparameters, seed, world size, non-finite policy and the
parameters' names, shapes and dtypes). Only when the digests differ do the ranks exchange
the configurations themselves, so that each rank raises :class:`ConfigMismatchError`
naming the field and the value on every rank.

Each bucket payload travels behind a 16-byte header written by the hook: the step, a
CRC-32 of the bucket's parameter layout, and flags (bit 0: this rank's gradient had
non-finite values). Every rank reads every header, so disagreements (a rank on another
step or another layout) and non-finite gradients are reported by all ranks at once,
naming the rank and the bucket, instead of decoding garbage or hanging.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import torch
import torch.distributed as dist

HEADER_BYTES = 16
FLAG_NONFINITE = 1


class ConfigMismatchError(RuntimeError):
    """Ranks registered the hook with different configurations."""


class NonFiniteGradientError(FloatingPointError):
    """A rank's gradient bucket holds inf or nan (policy ``"raise"``)."""


class PeerFailureError(RuntimeError):
    """A collective failed: a peer died, or did not answer within the timeout."""


class HeaderMismatchError(RuntimeError):
    """Ranks disagree on the step or the bucket layout of one collective."""


def digest(config: dict) -> bytes:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).digest()


def check_same_config(config: dict, group, device: torch.device) -> None:
    """Collective: every rank raises :class:`ConfigMismatchError` if any config differs."""
    n = dist.get_world_size(group)
    mine = torch.frombuffer(bytearray(digest(config)), dtype=torch.uint8).to(device)
    gathered = torch.empty(n * mine.numel(), dtype=torch.uint8, device=device)
    all_gather(gathered, mine, group)
    rows = gathered.view(n, -1).cpu()
    if all(torch.equal(rows[0], rows[r]) for r in range(1, n)):
        return
    configs: list = [None] * n
    dist.all_gather_object(configs, config, group=group)
    raise ConfigMismatchError(describe_difference(configs))


def describe_difference(configs: list[dict], labels: list[str] | None = None,
                        what: str = "ranks registered different configurations") -> str:
    """One line per differing field, with each config's value (labelled ``rank r``)."""
    labels = labels or [f"rank {r}" for r in range(len(configs))]
    lines = []
    for key in sorted({k for c in configs for k in c}):
        values = [json.dumps(c.get(key), sort_keys=True, default=str) for c in configs]
        if len(set(values)) > 1:
            each = ", ".join(f"{label}: {_short(v)}" for label, v in zip(labels, values,
                                                                          strict=True))
            lines.append(f"  {key}: {each}")
    return f"gradpack.ddp: {what}:\n" + "\n".join(lines)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def all_gather(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool = False):
    """``all_gather_into_tensor`` (named ``all_gather_single`` from torch 2.13 on)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


def layout_crc(params) -> int:
    return zlib.crc32(",".join(map(str, params)).encode())


def write_header(out: torch.Tensor, step: int, crc: int, flags: int) -> None:
    """Write the 16-byte header (little-endian int64 step, uint32 crc, uint32 flags)."""
    raw = step.to_bytes(8, "little", signed=True) + crc.to_bytes(4, "little") + \
        flags.to_bytes(4, "little")
    out[:HEADER_BYTES].copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))


def read_headers(gathered: torch.Tensor) -> list[tuple[int, int, int]]:
    raw = gathered[:, :HEADER_BYTES].cpu().numpy().tobytes()
    out = []
    for r in range(gathered.shape[0]):
        row = raw[r * HEADER_BYTES:(r + 1) * HEADER_BYTES]
        out.append((int.from_bytes(row[:8], "little", signed=True),
                    int.from_bytes(row[8:12], "little"), int.from_bytes(row[12:16], "little")))
    return out


def check_headers(headers, *, bucket: int, names: str, world_rank: int) -> list[int]:
    """Raise :class:`HeaderMismatchError` on step/layout disagreement; return the ranks
    whose gradients were non-finite."""
    steps = {h[0] for h in headers}
    crcs = {h[1] for h in headers}
    if len(steps) > 1 or len(crcs) > 1:
        per_rank = ", ".join(f"rank {r}: step {s}, layout {c:08x}"
                             for r, (s, c, _) in enumerate(headers))
        raise HeaderMismatchError(
            f"gradpack.ddp (rank {world_rank}): bucket {bucket} ({names}) is not the same "
            f"collective on every rank ({per_rank}); ranks must run the same steps with the "
            "same model"
        )
    return [r for r, h in enumerate(headers) if h[2] & FLAG_NONFINITE]
