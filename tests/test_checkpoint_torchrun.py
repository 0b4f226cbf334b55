"""A plain ``torchrun``-style loop: the hook built before DDP, one rank-0 checkpoint read by a
default ``torch.load`` on every rank, resume bit-identical to the uninterrupted run.

The resumed run hands the saved state to the hook *before* the model is wrapped and
registered (as Lightning restores), and its DDP is fresh (one initial bucket, then the
rebuild), while the uninterrupted run is long past its rebuild.
"""

from __future__ import annotations

import io
import os
import warnings

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack
from gradpack.algorithms import from_spec
from gradpack.errors import CheckpointError, ConfigMismatchError, HookStateError
from tests.ddp_support import run_workers, values
from tests.test_ddp import flat_params, mlp, train

pytestmark = pytest.mark.distributed

BEFORE, AFTER = 4, 3


def _alg(spec="topk:0.1"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_spec("ef21-sgdm", spec, eta=0.5, seed=3)


def _build(state_dict=None, **ddp_kwargs):
    state, hook = gradpack.ddp.hook(_alg(), state_dict=state_dict)
    ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20, **ddp_kwargs)
    ddp.register_comm_hook(state, hook)
    return ddp, state, torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)


def _saved_size(state) -> int:
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    return buf.tell()


def _torchrun_resume(rank, n, path, ddp_kwargs):
    ddp, state, opt = _build(**ddp_kwargs)
    fresh = state.state_dict()  # before the hook ever ran: a valid, empty state of this rank
    assert (fresh["rank"], fresh["world_size"], fresh["step"], fresh["units"]) == (rank, n, 0, [])
    train(ddp, opt, rank, 2)  # past DDP's bucket rebuild: the units are final
    size_early = _saved_size(state)
    train(ddp, opt, rank, BEFORE - 2, start=2)
    size_late = _saved_size(state)
    gathered = state.state_dict(all_ranks=True)  # collective; complete on rank 0 only
    if rank == 0:
        torch.save({"model": ddp.module.state_dict(), "opt": opt.state_dict(),
                    "hook": gathered}, path)
    stub_error = None
    if rank != 0:
        try:
            gradpack.ddp.hook(_alg(), state_dict=gathered)
        except CheckpointError as e:
            stub_error = str(e)
    dist.barrier()
    train(ddp, opt, rank, AFTER, start=BEFORE)
    uninterrupted = flat_params(ddp.module)

    ckpt = torch.load(path)  # default: weights_only=True
    ddp2, state2, opt2 = _build(state_dict=ckpt["hook"], **ddp_kwargs)  # before binding
    ddp2.module.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train(ddp2, opt2, rank, AFTER, start=BEFORE)

    ddp3, _, opt3 = _build(**ddp_kwargs)  # the same resume without the hook's state
    ddp3.module.load_state_dict(ckpt["model"])
    opt3.load_state_dict(torch.load(path)["opt"])
    train(ddp3, opt3, rank, AFTER, start=BEFORE)

    wrong = {}
    for label, fn in [
        ("config", lambda: gradpack.ddp.hook(from_spec("ef21-sgdm", "topk:0.2", eta=0.5,
                                                       seed=3), state_dict=ckpt["hook"])),
        ("rank", lambda: _loaded_on_wrong_rank(ckpt["hook"], rank)),
    ]:
        try:
            fn()
            wrong[label] = None
        except (ConfigMismatchError, CheckpointError) as e:
            wrong[label] = f"{type(e).__name__}: {e}"
    return {"resumed_equal": torch.equal(uninterrupted, flat_params(ddp2.module)),
            "without_state_equal": torch.equal(uninterrupted, flat_params(ddp3.module)),
            "step": state2.step, "sizes": (size_early, size_late), "stub": stub_error,
            "wrong": wrong, "positions": len(state2.param_names),
            "algorithm_as_state": _algorithm_as_state(rank)}


def _algorithm_as_state(rank):
    """The mistake the issue reports: the algorithm passed as the hook's state."""
    ddp = DDP(mlp())
    ddp.register_comm_hook(_alg(), gradpack.ddp.gradpack_hook)
    try:
        train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05), rank, 1)
    except Exception as e:  # noqa: BLE001 - DDP re-raises the hook's error as it sees fit
        return f"{type(e).__name__}: {e}"
    return "no error"


def _loaded_on_wrong_rank(gathered, rank):
    state, _ = gradpack.ddp.hook(_alg())
    state.bind_group(torch.device("cpu"))
    state.load_state_dict(gathered["ranks"][1 - rank])


# find_unused_parameters: DDP's first iteration already has several buckets, so the state
# binds to the parameters bucket by bucket
@pytest.mark.parametrize("ddp_kwargs", [{}, {"find_unused_parameters": True}],
                         ids=["one-first-bucket", "several-first-buckets"])
def test_torchrun_loop_resumes_bit_identically_from_one_rank0_checkpoint(tmp_path, ddp_kwargs):
    path = os.path.join(tmp_path, "ckpt.pt")
    for rank, res in enumerate(values(run_workers(_torchrun_resume, 2, tmp_path, path,
                                                  ddp_kwargs, timeout_s=60))):
        assert res["resumed_equal"]
        assert not res["without_state_equal"]  # the check can fail
        assert res["step"] == BEFORE + AFTER
        assert res["positions"] == len(list(mlp().parameters()))
        # bounded: the state after 4 steps is exactly as large as after 2
        assert res["sizes"][0] == res["sizes"][1], res["sizes"]
        assert (res["stub"] is None) == (rank == 0)
        if rank:
            assert "load the dict that rank 0 saved" in res["stub"]
        assert res["wrong"]["config"].startswith("ConfigMismatchError")
        assert "topk:0.1" in res["wrong"]["config"] and "topk:0.2" in res["wrong"]["config"]
        assert f"holds rank {1 - rank}'s error-feedback state" in res["wrong"]["rank"]
        message = res["algorithm_as_state"]  # says what to call instead
        assert "gradpack.ddp.hook(algorithm)" in message, message
        assert HookStateError.__name__ in message or "HookState" in message
