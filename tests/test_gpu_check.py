"""The prepared GPU check (``bench/gpu_check.py``) on a machine without a GPU: it says so and
exits 0, and its sections run on CPU tensors (the twin comparison with backend "triton"
under the interpreter at tiny sizes), so that every code path is exercised in CI."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from gradpack.bench import gpu_check, results
from gradpack.cli import main as cli_main
from gradpack.compressors import from_spec

FOREVER = math.inf
#: one spec or more of every registered family, small enough for the interpreter
CPU_SPECS = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:1:64:inf",
             "topk:0.05", "topk:0.05:approx", "randk:0.1", "randk:0.3:biased",
             "randk:0.5:qsgd:1:64:inf"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@no_cuda
def test_without_cuda_it_says_so_and_exits_0(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No CUDA device is present" in out and "Nothing was run" in out
    for section in gpu_check.SECTIONS:
        assert section.name in out
    assert cli_main(["bench", "--gpu-check", "--out", str(tmp_path)]) == 0
    assert "No CUDA device is present" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_twins_on_cpu_tensors_with_triton(tdevice):
    recs = gpu_check.twins(tdevice, deadline=FOREVER, specs=CPU_SPECS, sizes=[1, 257])
    assert [r["name"] for r in recs] == [f"{s} d={d}" for s in CPU_SPECS for d in (1, 257)]
    bad = [r for r in recs if not r["ok"]]
    assert not bad, bad


def test_twins_name_a_family_without_a_spec():
    recs = gpu_check.twins("cpu", deadline=FOREVER, specs=["sign"], sizes=[7], backend="torch")
    missing = {r["name"] for r in recs if not r["ok"]}
    assert missing == {"family " + f for f in ("bf16", "fp16", "identity", "qsgd", "randk",
                                                "ssign", "topk")}
    assert [r["ok"] for r in recs if r["name"] == "sign d=7"] == [True]


class _Broken:
    """A compressor whose payload's first byte is flipped, or whose state update is off by
    one ulp at element 0."""

    def __init__(self, c, what):
        self.c, self.what = c, what

    def encode(self, x, *, seed=0):
        p = self.c.encode(x, seed=seed).clone()
        if self.what == "payload":
            p[0] ^= 1
        return p

    def decode_sum(self, *args, **kwargs):
        return self.c.decode_sum(*args, **kwargs)

    def step(self, fusion, x, state, *, seed=0):
        p = self.c.step(fusion, x, state, seed=seed)
        if self.what == "state":
            state["h"][0] = torch.nextafter(state["h"][0], torch.tensor(math.inf))
        return p


@pytest.mark.parametrize("what,found", [("payload", "encode: 3 of"),
                                        ("state", "ef21: state h: 1 of")])
def test_twins_catch_one_wrong_bit(what, found):
    def make(spec, backend):
        c = from_spec(spec, backend="torch")
        return _Broken(c, what) if backend == "broken" else c

    recs = gpu_check.twins("cpu", deadline=FOREVER, specs=CPU_SPECS[:8], sizes=[100],
                           backend="broken", make=make)
    recs = [r for r in recs if not r["name"].startswith("family ")]
    assert len(recs) == 8 and not any(r["ok"] for r in recs)
    assert all(found in r["detail"] for r in recs), recs[0]["detail"]


def test_twins_stop_at_the_deadline():
    recs = gpu_check.twins("cpu", deadline=time.monotonic() - 1, specs=["sign"], sizes=[7, 9])
    assert [(r["name"], r["ok"], r["detail"]) for r in recs if r["name"].startswith("sign")] == [
        (f"sign d={d}", False, "not run: section budget spent") for d in (7, 9)]


def test_bench_section_writes_suite_rows(tmp_path):
    recs = gpu_check.bench("cpu", deadline=FOREVER, sizes=(4096,), specs=["sign", "topk:0.01"],
                           out=tmp_path, repeats=1, backend="torch")
    assert recs and all(r["ok"] for r in recs), [r for r in recs if not r["ok"]]
    rows = results.load(tmp_path / results.JSONL)
    assert {(r["spec"], r["op"]) for r in rows} >= {("", "copy"), ("sign", "encode"),
                                                     ("topk:0.01", "ef14")}
    assert all(tuple(r) == results.FIELDS for r in rows)
    assert len(recs) == len(rows)
    topk = [r["detail"] for r in recs if r["name"] == "topk:0.01 encode d=4096"]
    assert topk and "% of copy" in topk[0] and "x torch.topk" in topk[0]


def test_bench_section_records_what_the_budget_left_out(tmp_path):
    recs = gpu_check.bench("cpu", deadline=time.monotonic() - 1, sizes=(64,), specs=["sign"],
                           out=tmp_path, repeats=1, backend="torch")
    assert [r["name"] for r in recs if not r["ok"]] == ["sign d=64"]


@pytest.mark.slow
def test_pytest_section_runs_the_twin_tests_of_the_checkout():
    assert gpu_check.checkout() is not None
    node = "tests/test_elementwise_twins.py::test_encode_decode_sum[triton-sign-7]"
    (rec,) = gpu_check.pytest_twins("cpu", deadline=time.monotonic() + 300, files=[node])
    assert rec["ok"] and "1 passed" in rec["detail"], rec
    (rec,) = gpu_check.pytest_twins("cpu", deadline=time.monotonic(), files=[node])
    assert not rec["ok"] and rec["detail"] == "timed out"  # one second is too little


@pytest.mark.distributed
def test_ddp_section_on_gloo_cpu():
    """The 2-rank gloo run on CPU tensors (the 1-rank NCCL run is the same code, world 1)."""
    cases = [("ef21", "sign", {}), ("ef14", "topk:0.2", {})]
    recs = gpu_check.ddp("cpu", deadline=FOREVER, runs=[("gloo", 2)], cases=cases, steps=3,
                         backend="torch")
    assert [r["name"] for r in recs] == [f"gloo x2 {a} {s}" for a, s, _ in cases]
    assert all(r["ok"] for r in recs), [r for r in recs if not r["ok"]]


# -- the runner: each section in its own process, failures and hangs recorded ----------------
def _fine(device, *, deadline):
    return [gpu_check.check("fine", "one", True, 0.0, f"ran on {device}")]


def _boom(device, *, deadline):
    raise RuntimeError("deliberate failure")


def _hang(device, *, deadline):
    time.sleep(600)


def _section(name, fn, budget):
    return gpu_check.Section(name, f"{__name__}:{fn.__name__}", budget, f"test section {name}")


def test_runner_records_failures_and_hangs_and_runs_every_section(tmp_path):
    sections = [_section("boom", _boom, 60), _section("hang", _hang, 1),
                _section("fine", _fine, 60)]
    report, path = gpu_check.run_check("cpu", tmp_path, sections, total_s=200, grace_s=4,
                                       log=lambda line: None)
    status = {name: s["status"] for name, s in report["sections"].items()}
    assert status == {"boom": "failed", "hang": "timed out", "fine": "ok"}
    assert "deliberate failure" in report["sections"]["boom"]["checks"][0]["detail"]
    assert report["sections"]["fine"]["checks"][0]["detail"] == "ran on cpu"
    assert not report["ok"] and gpu_check.exit_status(report) == 1
    saved = json.loads(path.read_text())
    assert path.name.startswith("gpu_check_") and path.suffix == ".json"
    assert saved["device_name"] == results.device_name(torch.device("cpu"))
    assert saved["torch"] == torch.__version__ and saved["sections"].keys() == status.keys()
    text = gpu_check.summary(report)
    assert "FAILED" in text and "deliberate failure" in text and "timed out" in text


def test_runner_passes_when_every_section_passes(tmp_path):
    report, _ = gpu_check.run_check("cpu", tmp_path, [_section("fine", _fine, 60)],
                                    log=lambda line: None)
    assert report["ok"] and gpu_check.exit_status(report) == 0
    assert "PASSED" in gpu_check.summary(report)
