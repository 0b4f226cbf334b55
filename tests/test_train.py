"""``gradpack train``: data, models, report, and short end-to-end runs (spawned workers and
torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gradpack.cli import main
from gradpack.train import data as train_data
from gradpack.train import models as train_models
from gradpack.train import report as train_report
from gradpack.train.cli import parse_hparams
from tests.ddp_support import free_port


def test_datasets_need_no_download():
    train, test = train_data.digits(seed=0)
    assert train.x.shape[1:] == (1, 8, 8) and len(train.y) + len(test.y) == 1797
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    text_train, text_val = train_data.text_splits(max_bytes=100_000)
    assert text_train.numel() + text_val.numel() == 100_000
    assert int(text_train.max()) < 256


def test_models_shapes():
    assert train_models.build("cnn")(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    lm = train_models.build("lm", context=16)
    assert lm(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 256)
    with pytest.raises(ValueError, match="unknown model"):
        train_models.build("resnet")


def test_batches_are_seeded_per_rank():
    train, _ = train_data.digits()
    a = train_data.Batches(0, 1).classification(train, 1, 2, 8)
    b = train_data.Batches(0, 1).classification(train, 1, 2, 8)
    c = train_data.Batches(0, 0).classification(train, 0, 2, 8)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_hparams_and_ratio():
    assert parse_hparams(["eta=0.1", "gamma=2"]) == {"eta": 0.1, "gamma": 2}
    run = {"algorithm": "ef21", "compressor": "topk:0.1", "losses": [2.0, 1.0],
           "evals": [{"step": 2, "test_accuracy": 0.5}], "bits_up": 100, "bits_down": 400,
           "wall_s": 1.0, "encode_s": 0.1, "decode_s": 0.1, "comm_s": 0.2}
    rows = train_report.summary_rows({"compressed": run, "baseline": {**run, "bits_up": 400}})
    assert rows[0]["compression_ratio_up"] == 4.0 and rows[1]["compression_ratio_up"] == 1.0


@pytest.mark.distributed
def test_train_cnn_end_to_end(tmp_path, capsys):
    assert main(["train", "--steps", "30", "--eval-every", "10", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compression ratio" in out and "test accuracy" in out
    for name in ("loss_vs_steps.png", "loss_vs_bits.png", "run.json"):
        assert (tmp_path / name).stat().st_size > 0
    run = json.loads((tmp_path / "run.json").read_text())
    comp, base = run["runs"]["compressed"], run["runs"]["baseline"]
    assert len(comp["losses"]) == 30 and len(comp["bits_up_cum"]) == 30
    assert base["bits_up"] > 5 * comp["bits_up"]  # topk:0.05 after EF21's dense step 0
    assert comp["bits_up_cum"][-1] == comp["bits_up"]
    assert comp["evals"][-1]["step"] == 30


@pytest.mark.distributed
def test_train_lm_under_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "gradpack", "train", "--model", "lm",
           "--steps", "8", "--eval-every", "4", "--batch-size", "4", "--no-baseline",
           "--algorithm", "ef21-sgdm", "--compressor", "randk:0.1", "--hparam", "eta=0.2",
           "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["workers"] == 2 and list(run["runs"]) == ["compressed"]
    assert run["runs"]["compressed"]["evals"][-1]["val_loss"] > 0
    assert "val bits per byte" in proc.stdout


@pytest.mark.distributed
def test_train_decentralized_over_one_peer_exponential_graph(tmp_path, capsys):
    """``--algorithm dsgd --graph one-peer-exp --local-steps 2``: 4 ranks, each its own model,
    one neighbour message every second step: bits = steps/2 x 32 x parameters."""
    assert main(["train", "--algorithm", "dsgd", "--graph", "one-peer-exp", "--local-steps",
                 "2", "--compressor", "identity", "--workers", "4", "--steps", "6",
                 "--eval-every", "3", "--no-baseline", "--out", str(tmp_path)]) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    comp = run["runs"]["compressed"]
    assert run["config"]["hparams"] == {"graph": "one-peer-exp", "local_steps": 2}
    assert comp["bits_up"] == 3 * 32 * comp["params"] and comp["messages_up"] == 3
    assert comp["bits_up_cum"][:2] == [0, 32 * comp["params"]]
    assert comp["evals"][-1]["test_accuracy"] > 0
