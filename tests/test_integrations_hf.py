"""Hugging Face ``Trainer``: ``GradpackCallback`` registers the hook on the DDP model and its
state rides in the Trainer's checkpoints; ``resume_from_checkpoint`` is bit-identical to the
uninterrupted run (2 gloo ranks, CPU)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

from tests.ddp_support import (
    algorithm,
    dataset,
    flat,
    hide_repo_root,
    net,
    require,
    run_workers,
    torchrun_env,
    values,
)

pytestmark = pytest.mark.distributed

BATCH, STEPS, SAVE_AT = 4, 6, 3


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = net()

    def forward(self, x, labels):
        return {"loss": ((self.net(x) - labels) ** 2).mean()}


def _train(rank, n, root):
    torchrun_env(rank, n)
    hide_repo_root()
    from transformers import Trainer, TrainingArguments

    from gradpack.errors import CheckpointError
    from gradpack.integrations.hf import FILENAME, GradpackCallback

    x, y = dataset(n * BATCH * SAVE_AT)  # one epoch = SAVE_AT steps
    data = [{"x": x[i], "labels": y[i]} for i in range(len(x))]

    def run(out, resume=None, callback=None):
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, max_steps=STEPS,
            save_steps=SAVE_AT, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant",
            weight_decay=0.0, warmup_steps=0, seed=0, report_to="none", use_cpu=True,
            ddp_backend="gloo", ddp_bucket_cap_mb=1, disable_tqdm=True,
            logging_strategy="no", dataloader_num_workers=0)
        callback = callback or GradpackCallback(algorithm())
        model = Regression()
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return flat(model), callback

    out = os.path.join(root, "run")
    uninterrupted, cb = run(out)
    saved = os.path.join(out, f"checkpoint-{SAVE_AT}", FILENAME)
    default_load = torch.load(saved)  # weights_only=True
    resumed, cb2 = run(out, resume=os.path.join(out, f"checkpoint-{SAVE_AT}"))

    missing = None  # the same resume without gradpack's file is refused
    copy = os.path.join(root, f"copy{rank}", f"checkpoint-{SAVE_AT}")
    shutil.copytree(os.path.join(out, f"checkpoint-{SAVE_AT}"), copy)
    os.remove(os.path.join(copy, FILENAME))
    try:
        run(os.path.dirname(copy), resume=copy)
    except CheckpointError as e:
        missing = str(e)
    torch.distributed.barrier()
    fresh, _ = run(os.path.dirname(copy), resume=copy,
                   callback=GradpackCallback(algorithm(), missing="fresh"))
    return {"equal": torch.equal(uninterrupted, resumed), "registered": cb.registered,
            "fresh_equal": torch.equal(uninterrupted, fresh),
            "steps": (cb.state.step, cb2.state.step), "saved_ranks": len(default_load["ranks"]),
            "compressed": int(cb.state.ledger.totals()["bytes_up"][rank]), "missing": missing}


def test_hf_trainer_callback_registers_and_resumes_bit_identically(tmp_path):
    require("transformers")
    require("accelerate")
    for res in values(run_workers(_train, 2, tmp_path, str(tmp_path), timeout_s=60)):
        assert res["registered"]
        assert res["equal"]
        assert not res["fresh_equal"]  # the check can fail: without the state it differs
        assert res["steps"] == (STEPS, STEPS)
        assert res["saved_ranks"] == 2
        assert res["compressed"] > 0
        assert res["missing"] and "does not exist" in res["missing"]
