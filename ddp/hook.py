"""The comm hook: one algorithm step per gradient bucket, one async all-gather per bucket.

Hook body (on the autograd thread, in DDP's bucket order, the same on every rank)::

    units     = the compression units tiling this bucket (layout.py)
    payload_u = alg.worker_step(unit.state, grad_u, step=k, rank=r, stream=unit.stream)
    send      = header (16 bytes: step, layout CRC, flags) + payload_1 + ... + payload_m
    future    = all_gather_into_tensor([n * len(send)], send, async_op=True)   # the only collective

Callback (``future.then``, compute only, never a collective)::

    check every rank's header (same step, same layout, finite gradients)
    direction_u = alg.aggregate(unit.state, gathered[:, slice_u], step=k, stream=unit.stream)
    bucket.buffer()[slice_u] = direction_u          (cast to the bucket's dtype)

The optimizer then applies the direction as the gradient (``x <- x - lr * direction`` for
SGD). Collectives are issued only here, from the hook body: PyTorch's PowerSGD hook issues
an all-reduce inside a callback and deadlocks on gloo once a model has two buckets.

(No ``from __future__ import annotations`` here: DDP checks the hook's return annotation.)
"""

import time
import warnings

import torch

from .checks import (
    FLAG_NONFINITE,
    HEADER_BYTES,
    NonFiniteGradientError,
    PeerFailureError,
    all_gather,
    check_headers,
    layout_crc,
    read_headers,
    write_header,
)
from .state import HookState


def _bucket_grads(buf: torch.Tensor, pieces) -> list[torch.Tensor]:
    out = []
    for pc in pieces:
        if pc.contiguous:
            a, n = pc.runs[0]
            out.append(buf[a:a + n])
        else:
            out.append(torch.cat([buf[a:a + n] for a, n in pc.runs]))
    return out


def _names(state: HookState, params) -> str:
    names = [state.param_names[p] for p in params]
    return ", ".join(names[:3]) + (f", ... ({len(names)} parameters)" if len(names) > 3 else "")


def gradpack_hook(state: HookState, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook running ``state.algorithm`` on ``bucket`` (see the module docstring)."""
    if state._started != state.step:  # first bucket of a step: every callback of the last
        if state.failed is not None:  # step has run on every rank, so all ranks agree here
            raise RuntimeError(f"gradpack.ddp (rank {state.rank}): the hook failed earlier "
                               f"({state.failed}); its state is inconsistent across ranks: load "
                               "a checkpoint (state.load_state_dict) before training on")
        state._started = state.step
    alg, rank, n = state.algorithm, state.rank, state.world_size
    buf = bucket.buffer()
    params = bucket.parameters()
    try:
        idx = [state._index[id(p)] for p in params]
    except KeyError:
        raise RuntimeError(f"gradpack.ddp (rank {rank}): bucket {bucket.index()} holds a "
                           "parameter the hook was not registered with") from None
    numels = [p.numel() for p in params]
    if sum(numels) != buf.numel():
        raise RuntimeError(f"gradpack.ddp (rank {rank}): bucket {bucket.index()} buffer has "
                           f"{buf.numel()} elements, its parameters {sum(numels)}")
    step, where = state.step, f"bucket {bucket.index()} ({_names(state, idx)})"
    t0 = time.perf_counter()
    pieces = state.units.plan(idx, numels, buf.device)
    sizes = [alg.payload_bytes(pc.unit.numel, step) for pc in pieces]
    send = torch.zeros(HEADER_BYTES + sum(sizes), dtype=torch.uint8, device=buf.device)
    grads = _bucket_grads(buf, pieces)
    finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
    snapshot = None
    if finite:
        if state.nonfinite == "skip":
            snapshot = [{k: v.clone() for k, v in pc.unit.state.items()
                         if isinstance(v, torch.Tensor)} for pc in pieces]
        off = HEADER_BYTES
        for pc, g, size in zip(pieces, grads, sizes, strict=True):
            alg.worker_step(pc.unit.state, g, step=step, rank=rank, stream=pc.unit.stream,
                            out=send[off:off + size])
            off += size
    write_header(send, step, layout_crc(idx), 0 if finite else FLAG_NONFINITE)
    gathered = torch.empty(n * send.numel(), dtype=torch.uint8, device=buf.device)
    t1 = time.perf_counter()
    fut = all_gather(gathered, send, state.process_group, async_op=True).get_future()
    with state._lock:
        state.stats.encode_s += t1 - t0
        state.stats.collectives += 1
        state.record(step, [(alg.uplink_bits(pc.unit.numel, step), size)
                            for pc, size in zip(pieces, sizes, strict=True)],
                     downlink_bits=sum(alg.downlink_bits(pc.unit.numel, step) for pc in pieces),
                     handed=send.numel(), received=gathered.numel())
    if bucket.is_last():
        state.step += 1

    def finish(f: torch.futures.Future) -> torch.Tensor:
        t2 = time.perf_counter()
        try:
            f.wait()
        except Exception as e:  # noqa: BLE001 - re-raised with where and why
            state.failed = f"all-gather of {where} at step {step} failed"
            raise PeerFailureError(
                f"gradpack.ddp (rank {rank}): the all-gather of {where} at step {step} failed; "
                f"a peer process probably died or stopped answering within the process-group "
                f"timeout: {e}"
            ) from e
        rows = gathered.view(n, -1)
        bad = check_headers(read_headers(rows), bucket=bucket.index(), names=where,
                            world_rank=rank)
        if bad:
            return _nonfinite(state, bad, where, step, pieces, snapshot, buf)
        t3 = time.perf_counter()
        off = HEADER_BYTES
        for pc, size in zip(pieces, sizes, strict=True):
            payloads = rows[:, off:off + size]
            off += size
            if pc.contiguous and buf.dtype == torch.float32:
                a, m = pc.runs[0]
                alg.aggregate(pc.unit.state, payloads, step=step, stream=pc.unit.stream,
                              out=buf[a:a + m])
                continue
            direction = alg.aggregate(pc.unit.state, payloads, step=step, stream=pc.unit.stream)
            pos = 0
            for a, m in pc.runs:
                buf[a:a + m].copy_(direction[pos:pos + m])
                pos += m
        with state._lock:
            state.stats.comm_s += t2 - t1
            state.stats.decode_s += time.perf_counter() - t3
        return buf

    return fut.then(finish)


def _nonfinite(state, bad, where, step, pieces, snapshot, buf) -> torch.Tensor:
    ranks = ", ".join(map(str, bad))
    what = (f"non-finite gradient (inf/nan) in {where} at step {step} on rank(s) {ranks}")
    if state.nonfinite == "raise":
        state.failed = what
        raise NonFiniteGradientError(
            f"gradpack.ddp (rank {state.rank}): {what}; policy 'raise' (register(..., "
            "nonfinite='skip') zeroes the step instead and keeps the error-feedback state)"
        )
    if snapshot is not None:  # this rank ran its worker step: undo it
        for pc, saved in zip(pieces, snapshot, strict=True):
            for k, v in saved.items():
                pc.unit.state[k].copy_(v)
    with state._lock:
        state.stats.skipped.append((step, where, bad))
    warnings.warn(f"gradpack.ddp (rank {state.rank}): {what}; step skipped for this bucket "
                  "(zero direction, error-feedback state unchanged)", RuntimeWarning,
                  stacklevel=1)
    return buf.zero_()
