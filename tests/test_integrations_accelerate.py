"""accelerate: ``prepare`` then ``gradpack.integrations.accelerate.register``; the hook state
rides in ``save_state`` / ``load_state`` on every rank (2 gloo ranks, CPU), and resume is
bit-identical to the uninterrupted run."""

from __future__ import annotations

import os

import pytest
import torch

from tests.ddp_support import (
    BUCKET_CAP_MB,
    algorithm,
    dataset,
    flat,
    net,
    require,
    run_workers,
    torchrun_env,
    values,
)

pytestmark = pytest.mark.distributed

BEFORE, AFTER, BATCH = 3, 3, 4


def _run(rank, n, root):
    torchrun_env(rank, n)
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from gradpack.integrations.accelerate import register

    x, y = dataset(n * BATCH * (BEFORE + AFTER))

    def steps(accelerator, model, opt, start, count):
        for k in range(start, start + count):
            i = (k * n + rank) * BATCH
            loss = ((model(x[i:i + BATCH]) - y[i:i + BATCH]) ** 2).mean()
            opt.zero_grad()
            accelerator.backward(loss)
            opt.step()

    def build(with_state=True):
        accelerator = Accelerator(cpu=True, kwargs_handlers=[
            DistributedDataParallelKwargs(bucket_cap_mb=BUCKET_CAP_MB)])
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model, opt = accelerator.prepare(model, opt)
        state = register(accelerator, model, algorithm(), checkpoint=with_state)
        return accelerator, model, opt, state

    accelerator, model, opt, state = build()
    steps(accelerator, model, opt, 0, BEFORE)
    accelerator.save_state(root)
    steps(accelerator, model, opt, BEFORE, AFTER)
    uninterrupted = flat(model)
    saved = os.path.join(root, "custom_checkpoint_0.pkl")
    default_load = torch.load(saved) if rank == 0 else None  # weights_only=True

    accelerator, model2, opt2, state2 = build()
    accelerator.load_state(root)
    steps(accelerator, model2, opt2, BEFORE, AFTER)

    accelerator, model3, opt3, _ = build(with_state=False)  # the same resume, no hook state
    _load_without_custom(accelerator, root)
    steps(accelerator, model3, opt3, BEFORE, AFTER)
    return {"equal": torch.equal(uninterrupted, flat(model2)),
            "without_equal": torch.equal(uninterrupted, flat(model3)),
            "step": state2.step,
            "saved_ranks": len(default_load["ranks"]) if default_load else None}


def _load_without_custom(accelerator, root):
    """``load_state`` refuses a folder with more custom checkpoints than registered objects;
    load the same model and optimizer files by hand instead."""
    from accelerate.checkpointing import load_accelerator_state

    load_accelerator_state(root, accelerator._models, accelerator._optimizers,
                           accelerator._schedulers, accelerator._dataloaders,
                           accelerator.state.process_index, accelerator.scaler)


def test_accelerate_register_then_save_and_load_state_on_every_rank(tmp_path):
    require("accelerate")
    results = values(run_workers(_run, 2, tmp_path, str(tmp_path), timeout_s=60))
    for rank, res in enumerate(results):
        assert res["equal"], rank
        assert not res["without_equal"], rank  # the check can fail
        assert res["step"] == BEFORE + AFTER
    assert results[0]["saved_ranks"] == 2
