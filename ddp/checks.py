"""Per-bucket headers: every rank learns, in the bucket's own collective, whether the ranks
are in step, run the same layout, and have finite gradients.

Each bucket payload travels behind a 16-byte header written by the hook: the step, a
CRC-32 of the bucket's parameter layout, and flags (bit 0: this rank's gradient had
non-finite values; bit 1: its worker step failed its own checks). Every rank reads every
header, so disagreements (a rank on another step or another layout) and non-finite
gradients are reported by all ranks at once, naming the rank and the bucket, instead of
decoding garbage or hanging. The hook reads them as device flags, once per step
(:mod:`.round`); :func:`read_headers` and :func:`check_headers` say what is wrong.

The configuration check (algorithm, compressor, hparams, seed, the model's parameters) is
:func:`gradpack.comm.distributed.check_same_config`, shared with the transports.
"""

from __future__ import annotations

import zlib

import torch

from gradpack.errors import HeaderMismatchError

HEADER_BYTES = 16
FLAG_NONFINITE = 1  # this rank's gradient had inf/nan
FLAG_FAILED = 2  # this rank's worker step failed its checks (e.g. it overflowed)


def layout_crc(params) -> int:
    return zlib.crc32(",".join(map(str, params)).encode())


def write_header(out: torch.Tensor, step: int, crc: int, nonfinite: torch.Tensor,
                 failed: torch.Tensor) -> None:
    """Write the 16-byte header (little-endian int64 step, uint32 crc, uint32 flags) into
    ``out`` (8-byte aligned); the flags come from device tensors, so nothing is read."""
    out[:8].view(torch.int64).fill_(step)
    out[8:12].view(torch.int32).fill_(crc - (1 << 32) if crc >= 1 << 31 else crc)
    flags = nonfinite.to(torch.int32) * FLAG_NONFINITE + failed.to(torch.int32) * FLAG_FAILED
    out[12:16].view(torch.int32).copy_(flags.reshape(1))


def read_headers(gathered: torch.Tensor) -> list[tuple[int, int, int]]:
    raw = gathered[:, :HEADER_BYTES].cpu().numpy().tobytes()
    out = []
    for r in range(gathered.shape[0]):
        row = raw[r * HEADER_BYTES:(r + 1) * HEADER_BYTES]
        out.append((int.from_bytes(row[:8], "little", signed=True),
                    int.from_bytes(row[8:12], "little"), int.from_bytes(row[12:16], "little")))
    return out


def check_headers(headers, *, names: str, world_rank: int) -> list[int]:
    """Raise :class:`HeaderMismatchError` on step/layout disagreement; return the ranks
    whose gradients were non-finite."""
    steps = {h[0] for h in headers}
    crcs = {h[1] for h in headers}
    if len(steps) > 1 or len(crcs) > 1:
        per_rank = ", ".join(f"rank {r}: step {s}, layout {c:08x}"
                             for r, (s, c, _) in enumerate(headers))
        raise HeaderMismatchError(
            f"gradpack.ddp (rank {world_rank}): {names} is not the same "
            f"collective on every rank ({per_rank}); ranks must run the same steps with the "
            "same model"
        )
    return [r for r, h in enumerate(headers) if h[2] & FLAG_NONFINITE]
