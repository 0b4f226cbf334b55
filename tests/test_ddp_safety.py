"""Safety across ranks: config mismatch, non-finite gradients, ranks out of step, a dead peer.

Every error is raised by every live rank, names what and where, and comes within the
process-group timeout instead of a hang.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack.ddp
from gradpack.algorithms import from_spec
from tests.ddp_support import run_workers, values
from tests.test_ddp import batch, flat_params, mlp

pytestmark = pytest.mark.distributed


def _error(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test reads the message
        return f"{type(e).__name__}: {e}"
    return "no error"


def _step(ddp, opt, rank, k, poison=False):
    x, y = batch(rank, k)
    if poison:
        x[0, 0] = float("nan")
    loss = ((ddp(x) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _config_and_nonfinite(rank, n):
    out = {}
    spec = "topk:0.1" if rank == 0 else "topk:0.2"
    out["mismatch"] = _error(lambda: gradpack.ddp.register(DDP(mlp()), from_spec("ef21", spec)))

    # policy "raise": every rank names rank 1, the bucket and the step
    ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20)
    gradpack.ddp.register(ddp, from_spec("ef21", "topk:0.1"))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    _step(ddp, opt, rank, 0)
    out["raise"] = _error(lambda: _step(ddp, opt, rank, 1, poison=rank == 1))

    # policy "skip": zero direction, error-feedback state restored, training goes on
    ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20)
    state = gradpack.ddp.register(ddp, from_spec("ef21", "topk:0.1"), nonfinite="skip")
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for k in range(3):
        _step(ddp, opt, rank, k)
    before, sd = flat_params(ddp.module), state.state_dict()
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _step(ddp, opt, rank, 3, poison=rank == 1)
    out["skip_params_same"] = torch.equal(before, flat_params(ddp.module))
    after = state.state_dict()
    out["skip_state_same"] = all(
        torch.equal(a["state"][k], b["state"][k])
        for a, b in zip(sd["units"], after["units"], strict=True)
        for k in a["state"] if isinstance(a["state"][k], torch.Tensor))
    out["skip_warning"] = [str(w.message) for w in caught]
    out["skipped"] = state.stats.skipped
    _step(ddp, opt, rank, 4)
    out["params"] = flat_params(ddp.module)

    # ranks out of step: every rank says which step each rank is on
    ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20)
    state = gradpack.ddp.register(ddp, from_spec("ef21", "topk:0.1"))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    _step(ddp, opt, rank, 0)
    state.step += rank
    out["out_of_step"] = _error(lambda: _step(ddp, opt, rank, 1))
    return out


def test_config_mismatch_nonfinite_and_out_of_step_errors_name_rank_and_bucket(tmp_path):
    results = values(run_workers(_config_and_nonfinite, 2, tmp_path))
    for rank, out in enumerate(results):
        assert out["mismatch"].startswith("ConfigMismatchError"), out["mismatch"]
        assert 'compressor: rank 0: "topk:0.1", rank 1: "topk:0.2"' in out["mismatch"]
        assert "NonFiniteGradientError" in out["raise"], out["raise"]
        assert "on rank(s) 1" in out["raise"] and "bucket" in out["raise"]
        assert "at step 1" in out["raise"] and f"(rank {rank})" in out["raise"]
        assert out["skip_params_same"] and out["skip_state_same"]
        assert any("rank(s) 1" in w for w in out["skip_warning"])
        assert out["skipped"] and all(s[0] == 3 and s[2] == [1] for s in out["skipped"])
        assert "HeaderMismatchError" in out["out_of_step"] or "step 1" in out["out_of_step"]
        assert "rank 0: step 1" in out["out_of_step"] and "rank 1: step 2" in out["out_of_step"]
    assert torch.equal(results[0]["params"], results[1]["params"])


TIMEOUT_S = 20


def _dead_peer(rank, n):
    ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20)
    gradpack.ddp.register(ddp, from_spec("ef21", "topk:0.1"))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for k in range(3):
        _step(ddp, opt, rank, k)
    if rank == n - 1:
        os._exit(0)  # dies without a word
    t0 = time.monotonic()
    error = _error(lambda: [_step(ddp, opt, rank, k) for k in range(3, 6)])
    return {"error": error, "seconds": time.monotonic() - t0}


def test_dead_peer_fails_the_others_within_the_timeout(tmp_path):
    results = run_workers(_dead_peer, 3, tmp_path, timeout_s=TIMEOUT_S)
    assert results[2] is None
    for rank, res in enumerate(values(results[:2])):
        assert res["seconds"] < TIMEOUT_S + 5, res
        assert "PeerFailureError" in res["error"] or "gradpack.ddp" in res["error"], res
        assert f"gradpack.ddp (rank {rank})" in res["error"] and "died" in res["error"], res
