"""Top-K sparsification, exact and threshold ("approx") selection: the spec (plan math,
payload layout, validation) and the dispatcher. :mod:`.topk_torch` is the torch twin,
:mod:`.topk_triton` and :mod:`.topk_cpu` the kernels.

Selection works on the order-preserving int32 image of ``|r|`` (:func:`.sparse.key_image`),
``r`` the fp32 residual. Every selection is a *band select*, parametrised by
``(top, lo, need)``::

    S = {i : key_i > top}  U  {the `need` lowest indices i with lo <= key_i <= top}

**Exact** (``topk:R``): with ``T`` the K-th largest key and ``g = #{key > T}``, the plan is
``(T, T, K - g)``: the K largest ``|r|``, ties at the threshold broken by the lowest index,
so the set is a deterministic function of ``r``. ``T`` is found by a radix select on the
keys. The Triton kernels histogram digits of 11, 10 and 10 bits, each pass restricted to
the bin holding the K-th largest key, with an early exit when that bin holds exactly the
remaining count (:mod:`.topk_triton`). The torch twin, the fast CPU path, takes its first
bin boundary from the strided sample instead (verified by one count; a ``2**15``-bin
histogram when the sample misjudged it), compacts the candidates above the boundary in one
pass and selects ``T`` among them in linear time (:func:`exact_indices_torch`). Both
compute the same set, so both write the same payload.

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
``alpha = K/d``. On the Triton path the threshold mode replaces the radix passes and their
host synchronisations by one counting pass; on the torch path, whose exact select already
starts from the sample, it is not faster.

Payload: ``K`` fp32 values ``r[i]`` in ascending index order, then the ``K`` indices as
``ceil(log2 d)``-bit fields (the :mod:`.bitpack` stream; none when ``d == 1``), then zero
padding.
Decoders check every index is in ``[0, d)`` and that they strictly increase.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gradpack.errors import CorruptPayloadError

from .bitpack import words_for
from .dispatch import Table
from .fusion import Fusion
from .sparse import accumulator, key_image, key_to_float

SAMPLE = 32768  # keys in the threshold mode's strided sample
FRACTIONS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
GUESS = 1.5  # exact paths: candidates above the sample key with ~GUESS * K above it

IMPLS = Table("topk", torch=".topk_torch", triton=".topk_triton", cpu=".topk_cpu")


def index_width(d: int) -> int:
    """Bits per index field: ``ceil(log2 d)``, 0 when ``d == 1``."""
    return (d - 1).bit_length()



def body_bytes(k: int, d: int) -> int:
    """Bytes of values and index words (the rest of the payload is zero padding)."""
    w = index_width(d)
    return 4 * k + (4 * words_for(k, w) if w else 0)



def sample_desc(r: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Keys of the strided sample ``r[::stride]`` (at most ``SAMPLE``), descending."""
    stride = max(1, r.numel() // SAMPLE)
    sample = key_image(r[::stride].contiguous())
    return torch.sort(sample, descending=True).values, stride



def sample_rank(n: int, stride: int, k: int, f: float) -> int:
    """Sample rank above which about ``f * k`` of all elements are expected."""
    return min(n - 1, max(0, math.ceil(k * f / stride) - 1))



def sample_key(desc: torch.Tensor, stride: int, k: int, f: float) -> int:
    return int(desc[sample_rank(desc.numel(), stride, k, f)])



def sample_thresholds(r: torch.Tensor, k: int) -> torch.Tensor:
    """The threshold mode's candidate thresholds (int32 keys, non-increasing): keys of a
    strided sample of ``r`` at the ranks where ``f * k`` elements are expected above."""
    desc, stride = sample_desc(r)
    ranks = [sample_rank(desc.numel(), stride, k, f) for f in FRACTIONS]
    return torch.stack([desc[i] for i in ranks])  # views: no host-to-device copy



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




def check_indices(idx: torch.Tensor, d: int, name: str, *, defer: bool = True
                  ) -> torch.Tensor | None:
    """Raise :class:`~gradpack.errors.CorruptPayloadError` naming the first row of ``idx``
    ([n, k] int64) whose indices are not strictly increasing in ``[0, d)`` (as every
    encoder writes them). Inside deferred checks (:mod:`gradpack.compressors.faults`, and
    ``defer``) the error is recorded as a device flag instead, and the rows' bad mask
    ([n] bool) returned for the caller to leave those rows out."""
    bad = ((idx < 0) | (idx >= d)).any(1)
    if idx.shape[1] > 1:
        bad |= (idx[:, 1:] <= idx[:, :-1]).any(1)

    def error() -> CorruptPayloadError:
        row = int(torch.nonzero(bad)[0])
        return CorruptPayloadError(
            f"{name}: payload row {row} is corrupt: its index fields must strictly increase "
            f"and lie in [0, {d}); nothing was written"
        )

    from gradpack.compressors import faults  # here: compressors import this module

    deferred = faults.current() if defer else None
    if deferred is not None:
        deferred.flag(bad.any(), error)
        return bad
    if bool(bad.any()):  # the one host read of a decode (a device sync on a GPU)
        raise error()
    return None


def read_payloads(payloads: torch.Tensor, k: int, d: int, name: str,
                  unpack: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx [n, k] int64, vals [n, k] fp32 view)`` of payload rows whose length was checked,
    the index fields read with a backend's ``unpack(words, n, width)``; validated by
    :func:`check_indices`."""
    n = payloads.shape[0]
    vals = payloads[:, : 4 * k].view(torch.float32)
    w = index_width(d)
    if w == 0:
        return torch.zeros(n, k, dtype=torch.int64, device=payloads.device), vals
    nw = words_for(k, w)
    words = payloads[:, 4 * k : 4 * (k + nw)].view(torch.int32)
    idx = torch.stack([unpack(words[i], k, w) for i in range(n)])
    bad = check_indices(idx, d, name)
    if bad is not None:  # deferred: a corrupt row decodes to nothing, never out of bounds
        keep = ~bad[:, None]
        idx, vals = torch.where(keep, idx, 0), torch.where(keep, vals, 0.0)
    return idx, vals


def decode_rows(k: int, payloads, d: int, out, scale: float, add: bool, name: str,
                unpack: Callable, scatter_add: Callable) -> None:
    """``out (+)= scale * sum_i C_i`` (:mod:`.sparse` order) with a backend's ``unpack``
    and ``scatter_add``, after validating every row."""
    idx, vals = read_payloads(payloads, k, d, name, unpack)
    acc = accumulator(out, add)
    for i in range(payloads.shape[0]):
        scatter_add(acc, idx[i], vals[i], scale)
    if acc.data_ptr() != out.data_ptr():
        out.view(-1).copy_(acc)


def encode(approx: bool, k: int, fusion: Fusion, x, state, payload, backend: str,
           scratch: dict | None = None) -> None:
    """Write the Top-K payload of ``r = prologue(x)`` and apply the epilogue with ``C(r)``.
    ``scratch``: a dict the caller keeps between calls, holding reusable work buffers."""
    IMPLS(backend).encode(approx, k, fusion, x, state, payload, scratch)


def decode_sum(k: int, payloads, d: int, out, scale: float, add: bool, backend: str,
               name: str = "topk") -> None:
    """``out (+)= scale * sum_i C_i`` (:mod:`.sparse` order), after validating every row."""
    IMPLS(backend).decode_sum(k, payloads, d, out, scale, add, name)
