"""The comm hook: the algorithm steps its compression units as DDP's buckets arrive, one async
all-gather per bucket, and the step's checks are read once, when its last bucket closes.

Hook body (on the autograd thread, in DDP's bucket order, the same on every rank)::

    ready     = the units this bucket completes (layout.py: usually exactly the bucket)
    snapshot every ready unit's state                                  (round.py)
    payload_u = alg.worker_step(unit.state, grad_u, step=k, rank=r, stream=unit.stream)
    send      = header (16 bytes: step, layout CRC, flags) + payload_1 + ... + payload_m
    future    = transport.all_gather(send, async_op=True)      # gradpack.comm; the only collective
    return the bucket's gated future                            # opened when the step closes

Callback (``future.then``, compute only, never a collective)::

    flag every rank's header (same step, same layout, finite gradient, worker step ok)
    direction_u = alg.aggregate(unit.state, gathered[:, slice_u], step=k, stream=unit.stream)
    the bucket slices of unit u = direction_u       (cast to the bucket's dtype)
    the last callback of the step: read every flag at once; commit, or restore every
    snapshot and fail (or skip) the step on every rank                  (round.py)

No call in the body or the callbacks reads the device (the compressors' checks run deferred,
:mod:`gradpack.compressors.faults`): one host read per step, not per bucket.

The first time the hook runs, the state binds itself (:mod:`.state`): to the process group
(rank, world size, the :class:`~gradpack.comm.ProcessGroupTransport` that sends and records
the collective in the ledger), and, bucket by bucket during that first step, to the model's
parameters; each of those buckets first runs the cross-rank config check
(:func:`gradpack.comm.distributed.check_same_config`) unless :func:`register` ran it.

The optimizer then applies the direction as the gradient (``x <- x - lr * direction`` for
SGD). Collectives are issued only here, from the hook body: PyTorch's PowerSGD hook issues
an all-reduce inside a callback and deadlocks on gloo once a model has two buckets.

(No ``from __future__ import annotations`` here: DDP checks the hook's return annotation.)
"""

import time

import torch

from gradpack.comm.distributed import check_same_config
from gradpack.comm.ledger import record_round
from gradpack.compressors.base import _nonfinite
from gradpack.compressors.faults import Faults
from gradpack.errors import (
    HookStateError,
    NonFiniteError,
    NonFiniteGradientError,
    PeerFailureError,
)

from .checks import (
    FLAG_FAILED,
    FLAG_NONFINITE,
    HEADER_BYTES,
    check_headers,
    layout_crc,
    read_headers,
    write_header,
)
from .round import Round
from .state import HookState


def _names(state: HookState, params) -> str:
    names = [state.param_names[p] for p in params]
    return ", ".join(names[:3]) + (f", ... ({len(names)} parameters)" if len(names) > 3 else "")


def gradpack_hook(state: HookState, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook running ``state.algorithm`` on ``bucket`` (see the module docstring)."""
    if not isinstance(state, HookState):
        raise HookStateError(
            f"gradpack.ddp: the hook's state must be a gradpack.ddp.HookState, got "
            f"{type(state).__name__}; build both with `state, hook = gradpack.ddp.hook("
            "algorithm)` and register them with `model.register_comm_hook(state, hook)`"
        )
    buf = bucket.buffer()
    state.bind_group(buf.device)
    rnd = state.round
    if rnd is None or rnd.step != state.step or rnd.closed:  # the step's first bucket: the
        if state.failed is not None:  # last step's round has closed on every rank
            raise HookStateError(
                f"gradpack.ddp (rank {state.rank}): the hook failed earlier ({state.failed}); "
                "its state is inconsistent across ranks: load a checkpoint "
                "(state.load_state_dict) before training on")
        rnd = state.round = Round(state.step, state.spares,  # policy skip undoes, so snapshots
                                  state.transactional or state.nonfinite == "skip")
    rank = state.rank
    params = bucket.parameters()
    fresh = not state.checked and any(id(p) not in state._index for p in params)
    idx = state.positions(params, bucket.index())
    if fresh:  # binding: the ranks must agree on the config and on this bucket's parameters
        check_same_config({**state.config(), "bucket": bucket.index(), "parameters": [
            (i, list(p.shape), str(p.dtype)) for i, p in zip(idx, params, strict=True)]},
            state.process_group, buf.device, who=f"gradpack.ddp (rank {rank})")
    numels = [p.numel() for p in params]
    if sum(numels) != buf.numel():
        raise RuntimeError(f"gradpack.ddp (rank {rank}): bucket {bucket.index()} buffer has "
                           f"{buf.numel()} elements, its parameters {sum(numels)}")
    step, where = state.step, f"bucket {bucket.index()} ({_names(state, idx)})"
    fut = rnd.add_bucket(buf)
    t0 = time.perf_counter()
    try:
        state.units.bind(idx, params, buf.device, state.bucket_limits)
        pieces = state.units.collect(rnd.arrived, idx, numels, buf)
        if pieces:
            _send(state, rnd, pieces, step, where, t0)
    except BaseException as e:  # the step ends here: undo it once its all-gathers are done
        if rnd.abandon(e):
            rnd.close(state)
        raise
    if bucket.is_last():
        state.step += 1
        if rnd.last_issued():
            rnd.close(state)
    return fut


def _send(state: HookState, rnd: Round, pieces, step: int, where: str, t0: float) -> None:
    """Step the units this bucket completes, all-gather their payloads behind one header,
    and aggregate them when it arrives."""
    alg, rank = state.algorithm, state.rank
    for pc in pieces:
        rnd.snapshot(pc.unit)
    device = pieces[0].runs[0][0].device
    sizes = [alg.payload_bytes(pc.unit.numel, step) for pc in pieces]
    send = torch.empty(HEADER_BYTES + sum(sizes), dtype=torch.uint8, device=device)
    grads = [pc.grad() for pc in pieces]
    nonfinite = torch.stack([_nonfinite(g) for g in grads]).any()
    off, local = HEADER_BYTES, Faults()
    with local.deferred():  # no host reads: what the checks find travels in the header
        for pc, g, size in zip(pieces, grads, sizes, strict=True):
            alg.worker_step(pc.unit.state, g, step=step, rank=rank, stream=pc.unit.stream,
                            out=send[off:off + size])
            off += size
    failed = local.any()  # the worker step's own checks (its input, what it produced)
    units = [p for pc in pieces for p in pc.unit.params]
    write_header(send, step, layout_crc(units), nonfinite, failed if failed is not None
                 else torch.zeros((), dtype=torch.bool, device=device))
    t1 = time.perf_counter()
    faults = rnd.add_collective()
    with state._lock:
        record_round(state.ledger, step, [rank],
                     up=[(8 * HEADER_BYTES, HEADER_BYTES)] + [
                         (alg.uplink_bits(pc.unit.numel, step), size)
                         for pc, size in zip(pieces, sizes, strict=True)],
                     server_down_bits=sum(alg.downlink_bits(pc.unit.numel, step)
                                          for pc in pieces))
        try:  # the transport records the bytes handed to the all-gather in the ledger
            pending = state.transport.all_gather(send, async_op=True)
        except PeerFailureError as e:
            state.failed = f"all-gather of {where} at step {step} failed"
            raise _peer_failure(rank, where, step, e) from e
        state.stats.encode_s += t1 - t0
        state.stats.collectives += 1

    def finish(f: torch.futures.Future) -> None:
        t2 = time.perf_counter()
        error = None
        try:
            rows = f.wait()
        except Exception as e:  # noqa: BLE001 - re-raised with where and why
            state.failed = f"all-gather of {where} at step {step} failed"
            error = _peer_failure(rank, where, step, e)
        else:
            try:  # whatever happens, the callback counts: the step must close
                _check_rows(state, rows, send, faults, where, step, rnd)
                t3 = time.perf_counter()
                with faults.deferred():
                    _aggregate(alg, pieces, sizes, rows, step)
                with state._lock:
                    state.stats.comm_s += t2 - t1
                    state.stats.decode_s += time.perf_counter() - t3
            except Exception as e:  # noqa: BLE001 - failed with the step, on every rank
                error = e
        if rnd.finished(error):
            rnd.close(state)

    pending.get_future().then(finish)


def _flagged(rows: torch.Tensor, flag: int) -> torch.Tensor:
    """Per row: the header's flags word has ``flag`` set (little-endian: its low byte)."""
    return (rows[:, 12] & flag).ne(0)


def _check_rows(state, rows, send, faults: Faults, where, step, rnd) -> None:
    """The peers' headers, as flags: the same step and layout as this rank's (else
    :class:`HeaderMismatchError`), finite gradients (else :class:`NonFiniteGradientError`)."""
    faults.flag((rows[:, :12] != send[:12]).any(), lambda: _mismatch(rows, where, state))
    bad_rows, failed_rows = _flagged(rows, FLAG_NONFINITE), _flagged(rows, FLAG_FAILED)

    def ranks(flagged=bad_rows) -> list[int]:
        return flagged.nonzero().flatten().tolist()

    rnd.skips.append((where, ranks))

    def nonfinite() -> NonFiniteGradientError:
        what = (f"non-finite gradient (inf/nan) in {where} at step {step} on rank(s) "
                f"{', '.join(map(str, ranks()))}")
        err = NonFiniteGradientError(f"gradpack.ddp (rank {state.rank}): {what}; " + (
            "every rank's state is as before the step: skip this batch (optimizer.zero_grad()) "
            "and train on, or register with nonfinite='skip' to do that automatically"
            if state.transactional else "the state was not restored (transactional=False): "
            "load a checkpoint (state.load_state_dict) before training on"))
        err.what = what
        return err

    faults.flag(bad_rows.any(), nonfinite)
    faults.flag(failed_rows.any(), lambda: NonFiniteError(
        f"gradpack.ddp (rank {state.rank}): the worker step of {where} at step {step} failed "
        f"its checks on rank(s) {', '.join(map(str, ranks(failed_rows)))} (a non-finite or "
        "overflowing value); every rank's state is as before the step"))


def _mismatch(rows, where, state) -> Exception:
    try:
        check_headers(read_headers(rows), names=where, world_rank=state.rank)
    except Exception as e:  # noqa: BLE001 - the error to raise
        return e
    return RuntimeError(f"gradpack.ddp (rank {state.rank}): headers of {where} disagree")


def _aggregate(alg, pieces, sizes, rows, step) -> None:
    """Each unit's direction into its bucket slices (the algorithm flags a non-finite one:
    its aggregate commits its state only if the direction is finite)."""
    off = HEADER_BYTES
    for pc, size in zip(pieces, sizes, strict=True):
        payloads = rows[:, off:off + size]
        off += size
        view = pc.view()
        if view is not None:
            alg.aggregate(pc.unit.state, payloads, step=step, stream=pc.unit.stream, out=view)
        else:
            direction = alg.aggregate(pc.unit.state, payloads, step=step, stream=pc.unit.stream)
            pc.scatter(direction)


def _peer_failure(rank, where, step, err) -> PeerFailureError:
    return PeerFailureError(
        f"gradpack.ddp (rank {rank}): the all-gather of {where} at step {step} failed; a peer "
        f"process probably died or stopped answering within the process-group timeout: {err}"
    )
