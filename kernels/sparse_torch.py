"""Torch twin of :mod:`.sparse`: the residual, the sparse fusion epilogue without a dense
``c``, the candidate search of the selections, and the scatter-add."""

from __future__ import annotations

import torch

from .fusion import Fusion
from .fusion_torch import prologue
from .sparse import buffer


def residual(fusion: Fusion, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 residual ``r = prologue(x)`` with the momenta written; ``x`` itself when
    there is nothing to compute (fp32 input, no fusion), never modified."""
    if fusion.is_identity and x.dtype == torch.float32:
        return x
    return prologue(fusion, x, state, write=True)


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


def scatter_add(acc: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor,
                      scale: float) -> None:
    """``acc[idx] += vals * scale`` (fp32, ``idx`` distinct and in range)."""
    if scale != 1.0:
        vals = vals * torch.tensor(scale, dtype=torch.float32)
    acc.index_add_(0, idx, vals)


