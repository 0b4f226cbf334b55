"""Torch twin of :mod:`.topk`: the CPU-friendly exact select (first bin boundary from the
strided sample, verified by one compaction; a ``2**15``-bin histogram when the sample
misjudged it; a linear-time select among the candidates) and the threshold mode."""

from __future__ import annotations

import torch

from .bitpack import words_for
from .bitpack_torch import pack_words, unpack_fields
from .fusion import Fusion
from .sparse import buffer, key_image
from .sparse_torch import keys_at_least, residual, scatter_add, sparse_epilogue
from .topk import (
    FRACTIONS,
    GUESS,
    SAMPLE,
    approx_plan,
    body_bytes,
    decode_rows,
    index_width,
    sample_desc,
    sample_key,
    sample_thresholds,
)

_L1_SHIFT = 16  # the fallback histogram: key >> 16 (2**15 bins)


def band_select_torch(ck: torch.Tensor, cand: torch.Tensor, top: int, lo: int,
                      need: int) -> torch.Tensor:
    """The band select (module doc) over candidates: ``cand`` ascending indices whose keys
    ``ck`` include every key ``>= lo``. Returns the selected indices, ascending."""
    sure = ck > top
    band = (ck >= lo) & ~sure
    if need == 0:
        return cand[sure]
    rank = torch.cumsum(band, 0, dtype=torch.int64)  # inclusive
    return cand[sure | (band & (rank <= need))]


def _select_candidates(ck: torch.Tensor, cand: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top-``k`` among candidates that hold every key ``>=`` the k-th largest:
    ``T`` by a selection (``kthvalue``, linear time), then the band select ``(T, T, ...)``."""
    c = ck.numel()
    if c == k:
        return cand
    t = int(torch.kthvalue(ck, c - k + 1).values)  # the k-th largest key
    return band_select_torch(ck, cand, t, t, k - int(torch.count_nonzero(ck > t)))


def exact_indices_torch(r: torch.Tensor, keys: torch.Tensor, k: int,
                        scratch: dict | None = None) -> torch.Tensor:
    """Indices (int64, ascending) of the exact top-``k`` keys, ties by the lowest index.

    The torch twin's CPU-friendly radix select: the first digit's bin boundary comes from
    the strided sample (the key expected to have ``GUESS * k`` elements above it) and is
    verified by the compaction of the candidates above it; when the sample misjudged it
    (fewer than ``k`` candidates) a ``2**15``-bin histogram of ``key >> 16`` picks the bin
    and the compaction is redone. Then a linear-time selection among the candidates."""
    d = keys.numel()
    if k == d:
        return torch.arange(d, device=keys.device)
    if d > SAMPLE:
        desc, stride = sample_desc(r)
        cand = keys_at_least(keys, sample_key(desc, stride, k, GUESS), scratch)
        if cand.numel() >= k:
            return _select_candidates(keys[cand], cand, k)
    hist = torch.bincount(keys >> _L1_SHIFT, minlength=1 << (31 - _L1_SHIFT))
    ge = hist.flip(0).cumsum(0).flip(0)  # ge[b] = #{key >> 16 >= b}
    cand = keys_at_least(keys, (int((ge >= k).sum()) - 1) << _L1_SHIFT, scratch)
    return _select_candidates(keys[cand], cand, k)


def approx_indices_torch(r: torch.Tensor, keys: torch.Tensor, k: int,
                         scratch: dict | None = None) -> torch.Tensor:
    """The threshold mode's selection. The plan depends on the counts up to the first one
    ``>= k`` only, so the candidates are compacted above the ``GUESS`` threshold first and
    above the lowest threshold only when fewer than ``k`` lie above that."""
    thresholds = sample_thresholds(r, k).tolist()
    n = FRACTIONS.index(GUESS) + 1
    cand = keys_at_least(keys, thresholds[n - 1], scratch)
    if cand.numel() < k:
        n = len(thresholds)
        cand = keys_at_least(keys, thresholds[-1], scratch)
    thresholds = thresholds[:n]
    ck = keys[cand]
    counts = [int(torch.count_nonzero(ck >= t)) for t in thresholds]
    plan = approx_plan(thresholds, counts, keys.numel(), k)
    if plan is None:
        return exact_indices_torch(r, keys, k, scratch)
    return band_select_torch(ck, cand, *plan)


def write_payload(payload: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, d: int) -> None:
    k = vals.numel()
    w = index_width(d)
    payload[: 4 * k].view(torch.float32).copy_(vals)
    if w:
        nw = words_for(k, w)
        pack_words(idx, w, out=payload[4 * k : 4 * (k + nw)].view(torch.int32))
    payload[body_bytes(k, d) :].zero_()


def encode(approx: bool, k: int, fusion: Fusion, x: torch.Tensor, state, payload,
                 scratch: dict | None = None) -> None:
    r = residual(fusion, x, state)
    d = r.numel()
    keys = key_image(r, out=buffer(scratch, "keys", d, torch.int32, r.device))
    if k == d:
        idx = torch.arange(d, device=r.device)
    elif approx:
        idx = approx_indices_torch(r, keys, k, scratch)
    else:
        idx = exact_indices_torch(r, keys, k, scratch)
    vals = r[idx]
    write_payload(payload, vals, idx, d)
    sparse_epilogue(fusion, r, idx, vals + 0.0, state)



def decode_sum(k: int, payloads, d: int, out, scale: float, add: bool, name: str) -> None:
    decode_rows(k, payloads, d, out, scale, add, name, unpack_fields, scatter_add)
