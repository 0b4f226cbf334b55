"""Datasets for ``gradpack train`` that need no download.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes);
  a fixed, seeded 80/20 split.
- ``pystdlib``: bytes of the Python standard library's own ``*.py`` sources (present on
  any machine with Python), in sorted file order, cut to ``max_bytes``; the last 10% is the
  validation text. Byte-level: vocabulary 256.

Each rank trains on its own shard (rank ``r`` of ``n`` takes every n-th training example,
or the r-th contiguous slice of the text) and draws minibatches from a generator seeded by
``(seed, rank)``: runs are reproducible and the baseline sees the same batches.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from dataclasses import dataclass

import torch


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor


def digits(seed: int = 0) -> tuple[Split, Split]:
    """(train, test) of the digits images as float32 [N, 1, 8, 8] in [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    train, test = perm[:cut], perm[cut:]
    return Split(x[train], y[train]), Split(x[test], y[test])


def stdlib_text(max_bytes: int = 2_000_000) -> bytes:
    """The standard library's ``*.py`` files, concatenated in sorted order."""
    root = sysconfig.get_paths()["stdlib"]
    out, size = [], 0
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        with open(path, "rb") as f:
            chunk = f.read()
        out.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            break
    if not out:
        raise RuntimeError(f"no Python sources found under {root!r} for the text corpus")
    return b"".join(out)[:max_bytes]


def text_splits(max_bytes: int = 2_000_000) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) byte tensors (int64)."""
    data = torch.frombuffer(bytearray(stdlib_text(max_bytes)), dtype=torch.uint8).long()
    cut = int(0.9 * data.numel())
    return data[:cut], data[cut:]


class Batches:
    """Seeded minibatches from one rank's shard."""

    def __init__(self, seed: int, rank: int):
        self.gen = torch.Generator().manual_seed(1_000_003 * seed + rank)

    def classification(self, split: Split, rank: int, world: int, batch: int):
        x, y = split.x[rank::world], split.y[rank::world]
        idx = torch.randint(0, len(y), (batch,), generator=self.gen)
        return x[idx], y[idx]

    def text(self, data: torch.Tensor, rank: int, world: int, batch: int, context: int):
        shard = data.numel() // world
        part = data[rank * shard:(rank + 1) * shard]
        starts = torch.randint(0, part.numel() - context - 1, (batch,), generator=self.gen)
        windows = torch.stack([part[s:s + context + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]
