"""A failed DDP step leaves every rank as it was, and training goes on on the same model.

The hook reads its checks once per step, when the step's last bucket closes (ddp/round.py):
a non-finite gradient on one rank fails the step on every rank, naming that rank, with
every rank's worker and server state, step counter and parameters exactly as before the
step; the advised recovery (skip the batch, train on) then gives the iterates of a run that
never saw that batch.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import gradpack.ddp
from gradpack.algorithms import from_spec
from gradpack.errors import NonFiniteGradientError
from tests.ddp_support import run_workers, values
from tests.test_ddp import batch, flat_params, mlp
from tests.test_ddp_safety import _step

pytestmark = pytest.mark.distributed

BAD_STEP = 3
BATCHES = [0, 1, 2, 4, 5]  # what the recovered run trains on: batch 3 was skipped


def _tensors(sd: dict) -> list[torch.Tensor]:
    return [v.clone() for u in sd["units"] for v in u["state"].values()
            if isinstance(v, torch.Tensor)]


def _model(spec, alg_name):
    ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20)  # several buckets
    state = gradpack.ddp.register(ddp, from_spec(alg_name, spec, seed=3))
    return ddp, state, torch.optim.SGD(ddp.parameters(), lr=0.05)


def _fail_and_recover(rank, n, spec, alg_name):
    ddp, state, opt = _model(spec, alg_name)
    for k in BATCHES[:BAD_STEP]:
        _step(ddp, opt, rank, k)
    before = _tensors(state.state_dict())
    params, step = flat_params(ddp.module), state.step
    try:
        _step(ddp, opt, rank, BAD_STEP, poison=rank == 1)
        error = "no error"
    except RuntimeError as e:  # as README advises: DDP re-raises the hook's error
        if not isinstance(state.last_error, NonFiniteGradientError):
            raise
        error = f"{type(e).__name__}: {e}"
    after = _tensors(state.state_dict())
    out = {"error": error, "step_same": state.step == step,
           "params_same": torch.equal(params, flat_params(ddp.module)),
           "state_same": len(before) == len(after) and all(
               torch.equal(a, b) for a, b in zip(before, after, strict=True))}
    for k in BATCHES[BAD_STEP:]:  # the advice: skip the batch, train on
        _step(ddp, opt, rank, k)
    out["recovered"] = flat_params(ddp.module)
    ddp, state, opt = _model(spec, alg_name)  # a run that never saw the bad batch
    for k in BATCHES:
        _step(ddp, opt, rank, k)
    out["reference"] = flat_params(ddp.module)
    return out


@pytest.mark.parametrize("alg_name,spec", [("ef21", "topk:0.1"), ("ef21-sgdm", "qsgd:15"),
                                           ("dore", "qsgd:15")])
def test_a_failed_step_changes_nothing_and_training_goes_on(tmp_path, alg_name, spec):
    results = values(run_workers(_fail_and_recover, 2, tmp_path, spec, alg_name))
    for rank, out in enumerate(results):
        # DDP re-raises a hook's error as a RuntimeError carrying its type and message
        assert "NonFiniteGradientError: gradpack.ddp" in out["error"], out["error"]
        assert "on rank(s) 1;" in out["error"] and f"(rank {rank})" in out["error"]
        assert f"at step {BAD_STEP}" in out["error"]
        assert out["state_same"], f"rank {rank}: state moved"
        assert out["params_same"] and out["step_same"]
        assert torch.equal(out["recovered"], out["reference"]), f"rank {rank}"
    assert torch.equal(results[0]["recovered"], results[1]["recovered"])


def _huge_gradient(rank, n):
    """Issue 14's case: ef21 + qsgd:15, one rank's gradient x 1e22 (finite), then onwards."""
    ddp, state, opt = _model("qsgd:15", "ef21")
    for k in range(3):
        _step(ddp, opt, rank, k)
    log = []
    for k in range(3, 6):
        before, sd = flat_params(ddp.module), _tensors(state.state_dict())
        x, y = batch(rank, k)
        loss = ((ddp(x) - y) ** 2).mean() * (1e22 if rank == 1 and k == 3 else 1.0)
        opt.zero_grad()
        try:
            loss.backward()
            opt.step()
            error = None
        except Exception as e:  # noqa: BLE001 - the test reads it
            error = str(e)
        after = flat_params(ddp.module)
        log.append({"error": error, "finite": bool(torch.isfinite(after).all()),
                    "params_same": torch.equal(before, after),
                    "state_same": all(torch.equal(a, b) for a, b in
                                      zip(sd, _tensors(state.state_dict()), strict=True))})
    return log


def test_a_huge_finite_gradient_never_leaves_non_finite_parameters(tmp_path):
    """Every step either commits finite parameters on every rank or raises on every rank with
    parameters and state unchanged; the first error names the ranks whose gradients were
    non-finite at that step."""
    logs = values(run_workers(_huge_gradient, 2, tmp_path))
    for rank, log in enumerate(logs):
        for k, entry in enumerate(log, start=3):
            if entry["error"] is None:
                assert entry["finite"], f"rank {rank} step {k}: non-finite parameters"
            else:
                assert entry["params_same"] and entry["state_same"], (rank, k, entry["error"])
                assert "non-finite gradient" in entry["error"] or "overflow" in entry["error"]
    assert [e["error"] is None for e in logs[0]] == [e["error"] is None for e in logs[1]]


def _not_transactional(rank, n):
    ddp = DDP(mlp(), bucket_cap_mb=300 / 2**20)
    gradpack.ddp.register(ddp, from_spec("ef21", "topk:0.1"), transactional=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    _step(ddp, opt, rank, 0)
    errors = []
    for k, poison in ((1, rank == 0), (2, False)):
        try:
            _step(ddp, opt, rank, k, poison=poison)
        except Exception as e:  # noqa: BLE001 - the test reads it
            errors.append(str(e))
    return errors


def test_without_snapshots_a_failed_step_asks_for_a_checkpoint(tmp_path):
    """``transactional=False`` saves the copy of the state per step: a failed step still
    fails on every rank, and says the state must be reloaded; the next step refuses."""
    for errors in values(run_workers(_not_transactional, 2, tmp_path)):
        assert len(errors) == 2
        assert "on rank(s) 0;" in errors[0] and "load a checkpoint" in errors[0]
        assert "the hook failed earlier" in errors[1]
