"""Triton kernels of :mod:`.treesum` (same order of additions, bit for bit; ``Op.MAX``
takes maxima in the same tree)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fusion import PLAIN, Fusion
from .fusion_triton import fusion_args, load_residual
from .treesum import Op, chunk_width

OP_ABS = tl.constexpr(int(Op.ABS))
OP_SQUARE = tl.constexpr(int(Op.SQUARE))
OP_MAX = tl.constexpr(int(Op.MAX))

TILE = 4096  # elements per program


@triton.jit
def _tree(r, mask, OP: tl.constexpr, MAX: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
          LOG2P: tl.constexpr):
    """The [G] tree values of ``op(r)`` over the rows of the [G, P] tile (masked: zero)."""
    if OP == OP_ABS or OP == OP_MAX:
        r = tl.abs(r)
    elif OP == OP_SQUARE:
        r = r * r
    r = tl.where(mask, r, 0.0)
    for k in tl.static_range(LOG2P):
        if MAX:
            r = tl.max(tl.reshape(r, [G, P >> (k + 1), 2]), axis=2)
        else:
            r = tl.sum(tl.reshape(r, [G, P >> (k + 1), 2]), axis=2)
    return tl.reshape(r, [G])


@triton.jit
def _tree_kernel(x_ptr, v_ptr, u_ptr, h_ptr, out_ptr, d, seglen, nchunk, nrows,
                 keep, take, gamma, beta,
                 MOMENTUM: tl.constexpr, RESIDUAL: tl.constexpr, UPDATE: tl.constexpr,
                 OP: tl.constexpr, MAX: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                 LOG2P: tl.constexpr, SCALE: tl.constexpr, RESCUE: tl.constexpr):
    """``out[row]``: the tree value of ``op(r * SCALE)`` of one chunk; with ``RESCUE`` (a power
    of two, else 0) also ``out[nrows + row]``: that of ``op(r * RESCUE)``, from the same load."""
    row = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)  # one row = one chunk of one segment
    seg = row // nchunk
    pos = (row % nchunk)[:, None] * P + tl.arange(0, P)[None, :]
    offs = seg[:, None] * seglen + pos
    mask = (pos < seglen) & (offs < d) & (row < nrows)[:, None]
    r, v, u = load_residual(x_ptr, v_ptr, u_ptr, h_ptr, offs, mask, keep, take, gamma,
                            MOMENTUM, RESIDUAL)
    t = r
    if SCALE != 1.0:
        t = r * SCALE
    tl.store(out_ptr + row, _tree(t, mask, OP, MAX, G, P, LOG2P), mask=row < nrows)
    if RESCUE != 0.0:
        tl.store(out_ptr + nrows + row, _tree(r * RESCUE, mask, OP, MAX, G, P, LOG2P),
                 mask=row < nrows)


def _launch(fusion: Fusion, x, state, seglen: int, op: int, maxima: bool, scale: float = 1.0,
            rescue: float = 0.0) -> torch.Tensor:
    """Per-segment values ([nseg], or [2 * nseg] with ``rescue``: the rescue sums after the
    plain ones)."""
    d = x.numel()
    nseg = triton.cdiv(d, seglen)
    width = chunk_width(seglen)
    nchunk = triton.cdiv(seglen, width)
    nrows = nseg * nchunk
    out = torch.empty(nrows * (2 if rescue else 1), dtype=torch.float32, device=x.device)
    g = max(1, min(TILE // width, triton.next_power_of_2(nrows)))
    v, u, h = (state.get(k, x) for k in ("v", "u", "h"))
    _tree_kernel[(triton.cdiv(nrows, g),)](
        x, v, u, h, out, d, seglen, nchunk, nrows, **fusion_args(fusion),
        OP=int(op), MAX=maxima, G=g, P=width, LOG2P=width.bit_length() - 1,
        SCALE=float(scale), RESCUE=float(rescue), enable_fp_fusion=False)
    # the chunk values of both halves are whole segments of nchunk: one more level sums both
    return out if nchunk == 1 else _launch(PLAIN, out, {}, nchunk, Op.NONE, maxima)


def segment_sums(fusion: Fusion, x, state, seglen: int, op: Op, scale: float = 1.0
                 ) -> torch.Tensor:
    """Twin of :func:`.treesum_torch.segment_sums`."""
    assert op in (Op.ABS, Op.SQUARE, Op.MAX)
    return _launch(fusion, x, state, seglen, op, op == Op.MAX, scale)


def sums_and_rescue(fusion: Fusion, x, state, seglen: int, op: Op, rescue: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``segment_sums(..., op)`` and ``segment_sums(..., op, scale=rescue)`` in one pass
    over ``x`` (the header's plain and rescue sums, :mod:`.format`)."""
    assert op in (Op.ABS, Op.SQUARE)
    both = _launch(fusion, x, state, seglen, op, False, rescue=rescue)
    nseg = both.numel() // 2
    return both[:nseg], both[nseg:]
