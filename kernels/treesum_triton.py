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
def _tree_kernel(x_ptr, v_ptr, u_ptr, h_ptr, out_ptr, d, seglen, nchunk, nrows,
                 keep, take, gamma, beta,
                 MOMENTUM: tl.constexpr, RESIDUAL: tl.constexpr, UPDATE: tl.constexpr,
                 OP: tl.constexpr, MAX: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                 LOG2P: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)  # one row = one chunk of one segment
    seg = row // nchunk
    pos = (row % nchunk)[:, None] * P + tl.arange(0, P)[None, :]
    offs = seg[:, None] * seglen + pos
    mask = (pos < seglen) & (offs < d) & (row < nrows)[:, None]
    r, v, u = load_residual(x_ptr, v_ptr, u_ptr, h_ptr, offs, mask, keep, take, gamma,
                            MOMENTUM, RESIDUAL)
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
    tl.store(out_ptr + row, tl.reshape(r, [G]), mask=row < nrows)


def _launch(fusion: Fusion, x, state, seglen: int, op: int, maxima: bool) -> torch.Tensor:
    d = x.numel()
    nseg = triton.cdiv(d, seglen)
    width = chunk_width(seglen)
    nchunk = triton.cdiv(seglen, width)
    nrows = nseg * nchunk
    out = torch.empty(nrows, dtype=torch.float32, device=x.device)
    g = max(1, min(TILE // width, triton.next_power_of_2(nrows)))
    v, u, h = (state.get(k, x) for k in ("v", "u", "h"))
    _tree_kernel[(triton.cdiv(nrows, g),)](
        x, v, u, h, out, d, seglen, nchunk, nrows, **fusion_args(fusion),
        OP=int(op), MAX=maxima, G=g, P=width, LOG2P=width.bit_length() - 1,
        enable_fp_fusion=False)
    return out if nchunk == 1 else _launch(PLAIN, out, {}, nchunk, Op.NONE, maxima)


def segment_sums(fusion: Fusion, x, state, seglen: int, op: Op) -> torch.Tensor:
    """Twin of :func:`.treesum_torch.segment_sums`."""
    assert op in (Op.ABS, Op.SQUARE, Op.MAX)
    return _launch(fusion, x, state, seglen, op, op == Op.MAX)
