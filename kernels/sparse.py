"""Pieces every sparsifier (Top-K, Random-K) shares: the residual scratch, the sparse
fusion epilogue and the decode-side scatter-add. Torch twin and dispatcher;
:mod:`.sparse_triton` has the scatter-add kernel.

A sparsifier's payload holds ``K`` fp32 values ``v_j`` for ``K`` distinct indices
``i_j``; its decoded value is ``C(r)_i = 0.0 + v_j`` at ``i = i_j`` and ``0`` elsewhere
(the ``0.0 +`` is the decoder's accumulation from zero, which turns ``-0.0`` into
``+0.0``; the fused epilogue uses exactly that ``c`` so fused and unfused steps agree
bit for bit).

Decode-and-sum (``out (+)= scale * sum_i C_i``, fp32, rows in order)::

    acc = out (add=True) or 0.0
    for each row, for each entry j:  acc[i_j] = acc[i_j] + (v_j * scale if scale != 1 else v_j)

Coordinates a row does not select are left untouched. Indices within a row are
distinct (decoders validate this), so the per-row scatter has no write conflicts.
"""

from __future__ import annotations

import torch

from .fusion import Fusion, prologue


def residual(fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 residual ``r = prologue(x)`` with the momenta written; ``x`` itself when
    there is nothing to compute (fp32 input, no fusion), never modified."""
    if fusion.is_identity and x.dtype == torch.float32:
        return x
    return prologue(fusion, x, state, write=True)


def buffer(scratch: dict | None, name: str, numel: int, dtype: torch.dtype,
           device) -> torch.Tensor:
    """A work buffer of ``numel`` elements from the caller's ``scratch`` dict: a prefix of
    the largest one asked for so far under ``name`` (so the hot path does not allocate,
    and buckets of several sizes share one buffer); a fresh one without ``scratch``."""
    t = None if scratch is None else scratch.get(name)
    if t is None or t.numel() < numel or t.dtype != dtype or t.device != torch.device(device):
        t = torch.empty(numel, dtype=dtype, device=device)
        if scratch is not None:
            scratch[name] = t
    return t[:numel]


def key_image(r: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Order-preserving int32 image of ``|r|`` (fp32): the bits of ``r`` with the sign
    cleared. For finite values ``|a| < |b|`` iff ``key(a) < key(b)``; ``+0`` and ``-0``
    share key 0."""
    return torch.bitwise_and(r.view(torch.int32), 0x7FFFFFFF, out=out)


def keys_at_least(keys: torch.Tensor, lo: int, scratch: dict | None = None) -> torch.Tensor:
    """Ascending indices (int64) of the keys ``>= lo``: one compare into a bool buffer, then
    the nonzero search on it viewed as int64 words (8 flags each), expanding only the words
    that hold a flag; for a sparse mask that is several times faster than ``nonzero``."""
    d = keys.numel()
    padded = -(-d // 8) * 8
    mask = buffer(scratch, "mask", padded, torch.bool, keys.device)
    torch.ge(keys, lo, out=mask[:d])
    mask[d:].zero_()
    words = mask.view(torch.int64)
    hit = torch.nonzero(words).view(-1)
    flags = torch.nonzero(words[hit].view(torch.uint8).view(-1, 8))  # (word, byte), ascending
    return hit[flags[:, 0]] * 8 + flags[:, 1]


def key_to_float(key: int) -> float:
    """The non-negative fp32 value whose key is ``key`` (as a Python float)."""
    return torch.tensor(int(key), dtype=torch.int32).view(torch.float32).item()


def sparse_epilogue(
    fusion: Fusion,
    r: torch.Tensor,
    idx: torch.Tensor,
    c_sel: torch.Tensor,
    state: dict[str, torch.Tensor],
) -> None:
    """:func:`.fusion.epilogue` for ``c`` zero except ``c[idx] = c_sel``, without a dense
    ``c``. Bit-identical to the dense epilogue (``h - 0.0 == h``; ``h + 0.0 * beta`` is
    applied densely only when it can change a bit, i.e. turn ``-0.0`` into ``+0.0``)."""
    if fusion.update == "error":
        h = state["h"].view(-1)
        h_sel = r[idx] - c_sel
        h.copy_(r)
        h[idx] = h_sel
    elif fusion.update == "add":
        h = state["h"].view(-1)
        beta = torch.tensor(fusion.beta, dtype=torch.float32)
        h_sel = h[idx] + c_sel * beta
        zero_term = torch.zeros((), dtype=torch.float32) * beta
        if not (bool(zero_term == 0) and bool(torch.signbit(zero_term))):
            h.add_(zero_term)
        h[idx] = h_sel


def accumulator(out: torch.Tensor, add: bool) -> torch.Tensor:
    """The fp32 accumulator of decode-and-sum: ``out`` itself when fp32."""
    flat = out.view(-1)
    if flat.dtype == torch.float32:
        if not add:
            flat.zero_()
        return flat
    return flat.float() if add else torch.zeros(flat.numel(), dtype=torch.float32,
                                                device=flat.device)


def scatter_add_torch(acc: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor,
                      scale: float) -> None:
    """``acc[idx] += vals * scale`` (fp32, ``idx`` distinct and in range)."""
    if scale != 1.0:
        vals = vals * torch.tensor(scale, dtype=torch.float32)
    acc.index_add_(0, idx, vals)


def scatter_add(acc: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, scale: float,
                backend: str) -> None:
    """One row of decode-and-sum into the fp32 accumulator (see module doc)."""
    if backend == "triton":
        from .sparse_triton import scatter_add_triton

        scatter_add_triton(acc, idx, vals, scale)
    else:
        scatter_add_torch(acc, idx, vals, scale)
