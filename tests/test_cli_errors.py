"""A bad flag of ``gradpack train``, ``simulate`` or ``bench`` is one line on stderr naming the
flag and exit status 2, found in the parent before any work starts: no traceback, no worker.

Every case runs :func:`gradpack.cli.main` in this process with the work itself (the workers'
spawn, the simulation, the benchmark) replaced by :class:`WorkStarted`, so a check that comes
too late fails the test instead of training; a few run ``python -m gradpack`` for real.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import torch

from gradpack import cli_types
from gradpack.cli import main
from gradpack.sim.experiments import EXPERIMENTS


class WorkStarted(Exception):
    """The flags passed every check and the command began its work."""


def _work_started(*args, **kwargs):
    raise WorkStarted


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    import gradpack.bench.suite
    import gradpack.sim.cli
    import gradpack.train.cli

    monkeypatch.setattr(gradpack.train.cli, "_spawn", _work_started)
    monkeypatch.setattr(gradpack.train.cli, "_torchrun", _work_started)
    monkeypatch.setattr(gradpack.sim.cli, "run_experiment", _work_started)
    monkeypatch.setattr(gradpack.bench.suite, "bench", _work_started)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()  # gradpack simulate sets --threads
    yield
    torch.set_num_threads(threads)


def _one_line_error(capsys, argv: list[str], flag: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith(f"gradpack {argv[0]}: error: "), err
    assert flag in lines[0] and "Traceback" not in err, err
    return lines[0]


def _id(value) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


NO_CUDA_PAIR = pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="nccl would run here")

TRAIN = [
    (["--eval-every", "0"], "--eval-every"),
    (["--algorithm", "ef21-sgdm", "--hparam", "eta=abc"], "--hparam"),
    (["--algorithm", "ef21-sgdm", "--hparam", "eta=2"], "--hparam"),
    (["--algorithm", "choco-sgd", "--hparam", "gamma=abc"], "--hparam"),
    (["--hparam", "eta=0.1"], "--hparam"),  # ef21 takes none
    (["--hparam", "eta"], "--hparam"),
    (["--hparam", "seed=1"], "--hparam"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "1e300"], "--timeout"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--momentum", "-1"], "--momentum"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**63)], "--seed"),
    (["--seed", str(10**14)], "--seed"),  # past the minibatch generator's 64 bits
    (["--batch-size", "0"], "--batch-size"),
    (["--algorithm", "ef14", "--compressor", "sign", "--hparam", "gamma=inf"], "--hparam"),
    (["--algorithm", "ef14", "--hparam", "gamma=-1"], "--hparam"),
    (["--algorithm", "dore", "--compressor", "identity", "--hparam", "eta=nan"], "--hparam"),
    (["--workers", "0"], "--workers"),
    (["--workers", "two"], "--workers"),
    (["--steps", "0"], "--steps"),
    (["--steps", "1.5"], "--steps"),
    (["--compressor", "bogus"], "--compressor"),
    (["--compressor", "topk:2.5"], "--compressor"),
    (["--algorithm", "bogus"], "--algorithm"),
    (["--bucket-cap-mb", "0"], "--bucket-cap-mb"),
    (["--local-steps", "0", "--algorithm", "local-sgd"], "--local-steps"),
    (["--local-steps", "2", "--algorithm", "choco-sgd"], "--local-steps"),
    (["--local-steps", "2"], "--local-steps"),  # ef21 has no local steps
    (["--graph", "bogus", "--algorithm", "dsgd"], "--graph"),
    (["--graph", "ring"], "--graph"),  # ef21 has no graph
    (["--algorithm", "dsgd", "--hparam", "graph=3"], "--hparam"),
    (["--model", "resnet"], "--model"),
    (["--backend", "bogus"], "--backend"),
    pytest.param(["--backend", "nccl"], "--backend", marks=NO_CUDA_PAIR),
]


@pytest.mark.parametrize("argv, flag", TRAIN, ids=_id)
def test_train_bad_flag(capsys, argv, flag):
    _one_line_error(capsys, ["train", "--no-baseline", *argv], flag)


def test_train_out_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "f")], "--out")


@pytest.mark.parametrize("argv", [
    [], ["--algorithm", "ef21-sgdm", "--hparam", "eta=0.2", "--lr", "0.1", "--momentum", "0.9"],
    ["--algorithm", "ef14", "--compressor", "sign", "--hparam", "gamma=0.5", "--seed", "7"],
    ["--algorithm", "dsgd", "--graph", "exp", "--local-steps", "2", "--workers", "3"],
    ["--algorithm", "choco-sgd", "--hparam", "gamma=0.3", "--hparam", "graph=complete"],
    ["--steps", "1e3", "--eval-every", "10", "--batch-size", "8", "--timeout", "30"],
])
def test_train_good_flags_reach_the_workers(argv, tmp_path):
    with pytest.raises(WorkStarted):
        main(["train", "--out", str(tmp_path), *argv])


SIMULATE = [
    (["quadratic", "--workers", "0"], "--workers"),
    (["top1", "--workers", "-1"], "--workers"),
    (["logreg", "--workers", "1000"], "--workers"),  # more workers than samples
    (["top1", "--threads", "0"], "--threads"),
    (["top1", "--steps", "0"], "--steps"),
    (["top1", "--steps", "-1"], "--steps"),
    (["gossip", "--local-steps", "0"], "--local-steps"),
    (["choco", "--local-steps", "3"], "--local-steps"),  # choco-sgd gossips every step
    (["scaffold", "--graph", "ring"], "--graph"),  # local-sgd averages, has no graph
    (["top1", "--bandwidth", "0"], "--bandwidth"),
    (["top1", "--bandwidth", "-1"], "--bandwidth"),
    (["top1", "--latency", "-1", "--bandwidth", "1e6"], "--latency"),
    (["top1", "--latency", "0.1"], "--latency"),  # no link without --bandwidth
    (["top1", "--target", "0"], "--target"),
    (["top1", "--target", "nan"], "--target"),
    (["top1", "--seed", "-1"], "--seed"),
    (["top1", "--seed", str(2**63)], "--seed"),
    (["top1", "--run", "ef21"], "--run"),
    (["top1", "--run", "ef21/bogus"], "--run"),
    (["top1", "--run", "bogus/topk:1"], "--run"),
    (["top1", "--run", "ef21-sgdm/topk:1/eta=abc"], "--run"),
    (["top1", "--run", "ef21/topk:1/foo=1"], "--run"),
    (["top1", "--run", "ef21/topk:1/lr=abc"], "--run"),
    (["top1", "--run", "ef21/topk:1/lr=-1"], "--run"),
    (["top1", "--run", "ef14/sign/gamma=inf"], "--run"),
    (["top1", "--dataset", "mnist"], "--dataset"),
    (["top1", "--topology", "star"], "--topology"),
    (["top1", "--bits", "down"], "--bits"),
    (["top1", "--backend", "bogus"], "--backend"),
    (["bogus"], "experiment"),
]


@pytest.mark.parametrize("argv, flag", SIMULATE, ids=_id)
def test_simulate_bad_flag(capsys, argv, flag, tmp_path):
    _one_line_error(capsys, ["simulate", *argv, "--no-plot", "--out", str(tmp_path)], flag)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
@pytest.mark.parametrize("argv, flag", [
    (["--graph", "bogus"], "--graph"), (["--workers", "0"], "--workers"),
    (["--run", "ef21-sgdm/topk:1/eta=abc"], "--run"),
])
def test_simulate_bad_flag_every_preset(capsys, experiment, argv, flag, tmp_path):
    _one_line_error(capsys, ["simulate", experiment, *argv, "--out", str(tmp_path)], flag)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_simulate_presets_pass_the_checks(experiment, tmp_path):
    with pytest.raises(WorkStarted):
        main(["simulate", experiment, "--out", str(tmp_path), "--bandwidth", "1e6",
              "--latency", "1e-3", "--target", "0.1", "--seed", "3", "--steps", "5"])


def test_simulate_overrides_pass_the_checks(tmp_path):
    with pytest.raises(WorkStarted):
        main(["simulate", "quadratic", "--workers", "4", "--graph", "exp", "--local-steps", "3",
              "--run", "dsgd/identity/lr=0.1", "--run", "dcgd/identity/lr=0.1",
              "--out", str(tmp_path)])


def test_simulate_out_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    _one_line_error(capsys, ["simulate", "top1", "--out", str(tmp_path / "f")], "--out")


BENCH = [
    (["--sizes", "0"], "--sizes"),
    (["--sizes", "-5"], "--sizes"),
    (["--sizes", "abc"], "--sizes"),
    (["--sizes", "1.5"], "--sizes"),
    (["--sizes", ","], "--sizes"),
    (["--sizes", "4096,,8"], "--sizes"),
    (["--sizes", "1e20"], "--sizes"),
    (["--ops", "bogus"], "--ops"),
    (["--ops", "encode,bogus"], "--ops"),
    (["--payloads", "0"], "--payloads"),
    (["--repeats", "0"], "--repeats"),
    (["--max-op-s", "-1"], "--max-op-s"),
    (["--max-op-s", "nan"], "--max-op-s"),
    (["--specs", "bogus"], "--specs"),
    (["--specs", "sign,topk:0"], "--specs"),
    (["--specs", ","], "--specs"),
    (["--device", "bogus"], "--device"),
    pytest.param(["--device", "cuda"], "--device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
    (["--backend", "bogus"], "--backend"),
]


@pytest.mark.parametrize("argv, flag", BENCH, ids=_id)
def test_bench_bad_flag(capsys, argv, flag, tmp_path):
    _one_line_error(capsys, ["bench", "--out", str(tmp_path), *argv], flag)


def test_bench_out(capsys, tmp_path):
    _one_line_error(capsys, ["bench", "--table", "--out", str(tmp_path / "none")], "--out")
    (tmp_path / "f").write_text("")
    _one_line_error(capsys, ["bench", "--out", str(tmp_path / "f")], "--out")


def test_bench_good_flags_reach_the_benchmark(tmp_path):
    with pytest.raises(WorkStarted):
        main(["bench", "--sizes", "1e3,4096", "--specs", "sign,topk:0.01", "--ops",
              "encode,ef21", "--repeats", "2", "--payloads", "2", "--max-op-s", "0",
              "--out", str(tmp_path)])


def test_converters():
    assert cli_types.positive_int("1e6") == 10**6
    assert cli_types.key_value("eta=0.1") == ("eta", 0.1)
    assert cli_types.key_value("graph=ring") == ("graph", "ring")
    assert cli_types.list_of(cli_types.positive_int)("8, 16") == [8, 16]
    for convert, text in [(cli_types.positive_int, "0"), (cli_types.nonnegative_int, "-1"),
                          (cli_types.positive_float, "inf"), (cli_types.key_value, "gamma=nan"),
                          (cli_types.nonnegative_float, "-0.5"), (cli_types.seed, "-1")]:
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)


@pytest.mark.parametrize("argv, flag", [
    (["train", "--eval-every", "0"], "--eval-every"),
    (["train", "--algorithm", "ef21-sgdm", "--hparam", "eta=abc"], "--hparam"),
    (["simulate", "quadratic", "--workers", "0"], "--workers"),
    (["bench", "--ops", "bogus"], "--ops"),
])
def test_subprocess_exit_status_and_one_line(argv, flag, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "gradpack", *argv], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gradpack {argv[0]}: error: ")
    assert flag in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written: no run began
