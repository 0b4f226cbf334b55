"""Top-K sparsification, exact and threshold ("approx") selection: the torch twin and the
dispatcher (:mod:`.topk_triton` has the kernels).

Selection works on the order-preserving int32 image of ``|r|`` (:func:`.sparse.key_image`),
``r`` the fp32 residual. Every selection is a *band select*, parametrised by
``(top, lo, need)``::

    S = {i : key_i > top}  U  {the `need` lowest indices i with lo <= key_i <= top}

**Exact** (``topk:R``): with ``T`` the K-th largest key and ``g = #{key > T}``, the plan is
``(T, T, K - g)``: the K largest ``|r|``, ties at the threshold broken by the lowest index,
so the set is a deterministic function of ``r``. ``T`` is found by a radix select on the
keys: histogram the top digit, pick the bin holding the K-th largest, recurse into that
bin on the next digit (the Triton kernels use digits of 11, 10, 10 bits with an early exit
when a bin holds exactly the remaining count; the torch twin histograms 15 bits, compacts
the candidates ``key >= bin`` and histograms the 16 low bits of the bin's members only).
Both give the same set, so both write the same payload.

**Threshold** (``topk:R:approx``, the DGC idea): sort a strided sample of ``SAMPLE`` keys,
take the keys at the sample ranks where ``f * K`` elements are expected above, for the
fractions ``f`` in ``FRACTIONS``, and count the elements at or above each threshold in one
pass (the correction by counting). With ``t_j`` the first threshold whose count
``c_j >= K`` and ``m = c_{j-1} < K``, the plan is ``(t_{j-1} - 1, t_j, K - m)``: the exact
top ``m``, then the lowest-index ``K - m`` elements of the band ``[t_j, t_{j-1})``. So the
payload always holds exactly K entries; it is the exact top-K when ``c_j == K`` and
otherwise differs from it only inside the band: each band slot holds ``|r| >= t_j`` where the
exact answer may hold up to ``t_{j-1}``, i.e. ``||r - C(r)||^2`` exceeds the exact error by at
most ``(K - m)(t_{j-1}^2 - t_j^2)``. The plan is used only when counts alone prove the
contraction ``||C(r) - r||^2 <= (1 - K/d)||r||^2`` (:func:`approx_plan`); otherwise (ties, an
unrepresentative sample) the exact select runs. Both modes therefore guarantee
``alpha = K/d``; the threshold mode saves the radix passes and their host synchronisations.

Payload: ``K`` fp32 values ``r[i]`` in ascending index order, then the ``K`` indices as
``ceil(log2 d)``-bit fields (:mod:`.bitpack`; none when ``d == 1``), then zero padding.
Decoders check every index is in ``[0, d)`` and that they strictly increase.
"""

from __future__ import annotations

import math

import torch

from .bitpack import pack_words, unpack_fields, words_for
from .fusion import Fusion
from .sparse import accumulator, key_image, key_to_float, residual, scatter_add, sparse_epilogue

SAMPLE = 32768  # keys in the threshold mode's strided sample
FRACTIONS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
_L1_SHIFT = 16  # torch twin: first digit = key >> 16 (15 bits), second = key & 0xFFFF


def index_width(d: int) -> int:
    """Bits per index field: ``ceil(log2 d)``, 0 when ``d == 1``."""
    return (d - 1).bit_length()


def body_bytes(k: int, d: int) -> int:
    """Bytes of values and index words (the rest of the payload is zero padding)."""
    w = index_width(d)
    return 4 * k + (4 * words_for(k, w) if w else 0)


# -- selection (torch) --------------------------------------------------------------------
def _pick_bin(hist: torch.Tensor, need: int) -> tuple[int, int]:
    """Bin ``b`` holding the ``need``-th largest element and the count above it."""
    ge = hist.flip(0).cumsum(0).flip(0)  # ge[b] = #{digit >= b}
    b = int((ge >= need).sum()) - 1
    above = int(ge[b + 1]) if b + 1 < hist.numel() else 0
    return b, above


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


def exact_indices_torch(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (int64, ascending) of the exact top-``k`` keys, ties by the lowest index."""
    d = keys.numel()
    if k == d:
        return torch.arange(d, device=keys.device)
    hist = torch.bincount(keys >> _L1_SHIFT, minlength=1 << (31 - _L1_SHIFT))
    b1, above = _pick_bin(hist, k)
    lo1 = b1 << _L1_SHIFT
    cand = torch.nonzero(keys >= lo1).view(-1)
    ck = keys[cand]
    if cand.numel() == k:  # the bin holds exactly the remaining count
        return cand
    in_bin = ck < ((b1 + 1) << _L1_SHIFT)
    hist2 = torch.bincount(ck[in_bin] & ((1 << _L1_SHIFT) - 1), minlength=1 << _L1_SHIFT)
    b2, above2 = _pick_bin(hist2, k - above)
    t = lo1 | b2
    return band_select_torch(ck, cand, t, t, k - above - above2)


def sample_thresholds(r: torch.Tensor, k: int) -> torch.Tensor:
    """The threshold mode's candidate thresholds (int32 keys, non-increasing): keys of a
    strided sample of ``r`` at the ranks where ``f * k`` elements are expected above."""
    d = r.numel()
    stride = max(1, d // SAMPLE)
    sample = key_image(r[::stride].contiguous())
    desc = torch.sort(sample, descending=True).values
    last = sample.numel() - 1
    ranks = [min(last, max(0, math.ceil(k * f / stride) - 1)) for f in FRACTIONS]
    return desc[torch.tensor(ranks, device=r.device)]


def approx_plan(thresholds: list[int], counts: list[int], d: int,
                k: int) -> tuple[int, int, int] | None:
    """Band plan ``(top, lo, need)`` from the thresholds and their counts, or ``None`` when
    the counts cannot prove the contraction (then the exact select runs).

    Sure elements have ``|r| >= a = float(t_{j-1})``, band picks ``|r| >= b = float(t_j)``,
    the ``L = c_j - K`` band elements left out are ``< a`` and everything else ``< b``, so
    ``(m a^2 + (K - m) b^2)(d - K) >= K (L a^2 + (d - K - L) b^2)`` implies
    ``sum_S r^2 >= (K/d) ||r||^2``, i.e. ``||C(r) - r||^2 <= (1 - K/d)||r||^2``.
    """
    j = next((j for j, c in enumerate(counts) if c >= k), None)
    if j is None:
        return None
    t_lo = thresholds[j]
    left_out = counts[j] - k
    if left_out == 0:
        return (t_lo - 1, t_lo, 0)
    if j == 0:
        return None
    m, t_hi = counts[j - 1], thresholds[j - 1]
    a = key_to_float(t_hi) ** 2
    b = key_to_float(t_lo) ** 2
    lhs = (m * a + (k - m) * b) * (d - k)
    rhs = k * (left_out * a + (d - k - left_out) * b)
    if not (math.isfinite(lhs) and math.isfinite(rhs)) or lhs < rhs * (1 + 1e-9):
        return None
    return (t_hi - 1, t_lo, k - m)


def approx_indices_torch(r: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    thr = sample_thresholds(r, k)
    t_min = int(thr[-1])
    cand = torch.nonzero(keys >= t_min).view(-1)  # covers every threshold's count
    ck = keys[cand]
    thresholds = thr.tolist()
    counts = [int(torch.count_nonzero(ck >= t)) for t in thresholds]
    plan = approx_plan(thresholds, counts, keys.numel(), k)
    if plan is None:
        return exact_indices_torch(keys, k)
    return band_select_torch(ck, cand, *plan)


# -- payload --------------------------------------------------------------------------------
def write_payload(payload: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, d: int) -> None:
    k = vals.numel()
    w = index_width(d)
    payload[: 4 * k].view(torch.float32).copy_(vals)
    if w:
        nw = words_for(k, w)
        pack_words(idx, w, out=payload[4 * k : 4 * (k + nw)].view(torch.int32))
    payload[body_bytes(k, d) :].zero_()


def encode_torch(approx: bool, k: int, fusion: Fusion, x: torch.Tensor, state, payload) -> None:
    r = residual(fusion, x, state)
    keys = key_image(r)
    d = r.numel()
    if k == d:
        idx = torch.arange(d, device=r.device)
    elif approx:
        idx = approx_indices_torch(r, keys, k)
    else:
        idx = exact_indices_torch(keys, k)
    vals = r[idx]
    write_payload(payload, vals, idx, d)
    sparse_epilogue(fusion, r, idx, vals + 0.0, state)


def encode(approx: bool, k: int, fusion: Fusion, x, state, payload, backend: str) -> None:
    """Write the Top-K payload of ``r = prologue(x)`` and apply the epilogue with ``C(r)``."""
    if backend == "triton":
        from .topk_triton import encode_triton

        encode_triton(approx, k, fusion, x, state, payload)
    else:
        encode_torch(approx, k, fusion, x, state, payload)


# -- decode ---------------------------------------------------------------------------------
def read_payloads(payloads: torch.Tensor, k: int, d: int, backend: str, name: str):
    """``(idx [n, k] int64, vals [n, k] fp32 view)`` of payload rows whose length was checked;
    raises ``ValueError`` naming the row when an index is outside ``[0, d)`` or the indices
    do not strictly increase (as every encoder writes them)."""
    n = payloads.shape[0]
    vals = payloads[:, : 4 * k].view(torch.float32)
    w = index_width(d)
    if w == 0:
        return torch.zeros(n, k, dtype=torch.int64, device=payloads.device), vals
    nw = words_for(k, w)
    words = payloads[:, 4 * k : 4 * (k + nw)].view(torch.int32)
    if backend == "triton":
        from .bitpack_triton import unpack_triton

        idx = torch.stack([unpack_triton(words[i], k, w) for i in range(n)])
    else:
        idx = unpack_fields(words, k, w)
    bad = ((idx < 0) | (idx >= d)).any(1)
    if k > 1:
        bad |= (idx[:, 1:] <= idx[:, :-1]).any(1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"{name}: payload row {row} is corrupt: its index fields must strictly increase "
            f"and lie in [0, {d}); nothing was written"
        )
    return idx, vals


def decode_sum(k: int, payloads, d: int, out, scale: float, add: bool, backend: str,
               name: str = "topk") -> None:
    """``out (+)= scale * sum_i C_i`` (:mod:`.sparse` order), after validating every row."""
    idx, vals = read_payloads(payloads, k, d, backend, name)
    acc = accumulator(out, add)
    for i in range(payloads.shape[0]):
        scatter_add(acc, idx[i], vals[i], scale, backend)
    if acc.data_ptr() != out.data_ptr():
        out.view(-1).copy_(acc)


__all__ = ["SAMPLE", "FRACTIONS", "index_width", "body_bytes", "encode", "decode_sum",
           "exact_indices_torch", "approx_indices_torch", "approx_plan"]
