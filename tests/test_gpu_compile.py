"""Every Triton specialization the test session launched compiles for real GPU targets
(sm_80, sm_90, and AMD gfx942 when the triton wheel has its backend), without a GPU.

The session records its launches under ``TRITON_INTERPRET=1`` (``triton_launches.py``);
the test marked ``gpu_compile`` runs last and compiles them in a fresh process
(``gpu_compile.py``). Run alone, it first records the Triton twin tests (``-m triton``) in
a subprocess, so it checks something either way. It reuses Triton's own compile cache: the
first run compiles everything, later runs only what changed (a cache hit is a specialization
that compiled before with the same source, options and toolchain).
``GRADPACK_GPU_COMPILE_ARCH=sm_80,sm_90`` picks the targets of the session test and
``GRADPACK_GPU_COMPILE_OUT=DIR`` keeps its report (default: the test's tmp dir;
``bench/results/`` holds the committed one, made with a fresh cache).

A test's own throwaway kernels are launched under ``triton_launches.capture(exclusive=True)``
so that they stay out of the session's recording.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton_launches

from gradpack.kernels import interpreting, triton_available

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CLEAN = ("TRITON_INTERPRET", "GRADPACK_GRID_ORDER", triton_launches.ENV_PATH)

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs the triton package")
needs_interpreter = pytest.mark.skipif(
    not interpreting(), reason="runs kernels in Triton's interpreter (TRITON_INTERPRET=1)")

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _dot_k4_kernel(x_ptr, out_ptr, B: tl.constexpr):
        """x @ x for a BxB block: the interpreter runs it; NVIDIA targets reject K < 8."""
        offs = tl.arange(0, B)
        tile = offs[:, None] * B + offs[None, :]
        a = tl.load(x_ptr + tile)
        tl.store(out_ptr + tile, tl.dot(a, a))

    @triton.jit
    def _scale_kernel(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * scale, mask=mask)

    @triton.jit(do_not_specialize=["n"])
    def _scale_dns_kernel(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * scale, mask=mask)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    return {**env, **extra}


def _targets() -> list[str]:
    """sm_80, sm_90 and gfx942 (when the wheel has AMD's backend), or the comma-separated
    ``GRADPACK_GPU_COMPILE_ARCH``."""
    from triton.backends import backends

    chosen = os.environ.get("GRADPACK_GPU_COMPILE_ARCH")
    if chosen:
        return chosen.split(",")
    return ["sm_80", "sm_90"] + (["gfx942"] if "amd" in backends else [])


def _compile(launches: Path, out: Path, targets: list[str], *opts) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(TESTS / "gpu_compile.py"), str(launches), "--out-dir", str(out),
           *(f"--arch={t}" for t in targets), *opts]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "gpu_compile.jsonl").read_text().splitlines()]


def _record_twin_tests(path: Path) -> None:
    """Run alone: record what the Triton twin tests launch, in a subprocess."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "triton",
           str(TESTS), f"--triton-launches={path}"]
    done = subprocess.run(cmd, env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    # 1: some tests failed (they report that themselves); their launches are still valid
    assert done.returncode in (0, 1) and path.exists(), done.stdout[-5000:] + done.stderr[-5000:]


@pytest.mark.gpu_compile
def test_every_launched_specialization_compiles_for_gpus(request, tmp_path):
    recorder = triton_launches.session_recorder(request.config)
    launches = tmp_path / "launches.json"
    if recorder is not None and recorder.specs:
        assert not recorder.errors, recorder.errors
        recorder.dump(launches)
    else:
        _record_twin_tests(launches)
    records = triton_launches.load(launches)["specializations"]
    assert records, "no Triton launches were recorded"
    out = Path(os.environ.get("GRADPACK_GPU_COMPILE_OUT") or tmp_path / "report")
    targets = _targets()
    done = _compile(launches, out, targets, "--reuse-cache")
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    rows = _rows(out)
    assert len(rows) == len(records) * len(targets)
    assert all(row["ok"] and row["registers"] for row in rows)
    assert {(r["kernel"], r["target"]) for r in rows} == {
        (r["kernel"], t) for r in records for t in targets}


@needs_interpreter
def test_compile_check_names_a_kernel_that_only_the_interpreter_accepts(tmp_path):
    x = torch.arange(16, dtype=torch.float32)
    out = torch.empty_like(x)
    with triton_launches.capture(exclusive=True) as rec:
        _dot_k4_kernel[(1,)](x, out, B=4)
        _scale_kernel[(1,)](x, out.clone(), 16, 2.0, BLOCK=16)
    m = x.view(4, 4)
    assert torch.equal(out.view(4, 4), m @ m)  # fine in the interpreter
    rec.dump(tmp_path / "launches.json")
    targets = _targets()
    done = _compile(tmp_path / "launches.json", tmp_path, targets)
    assert done.returncode == 1, done.stdout + done.stderr
    for target in ("sm_80", "sm_90"):
        assert f"FAILED test_gpu_compile:_dot_k4_kernel [{target}] (B=4)" in done.stdout
    rows = {(r["kernel"].split(":")[1], r["target"]): r for r in _rows(tmp_path)}
    assert "K >= 8" in rows["_dot_k4_kernel", "sm_90"]["error"]
    assert all(rows["_scale_kernel", t]["ok"] for t in targets)
    if "gfx942" in targets:  # AMD's backend accepts the small dot
        assert rows["_dot_k4_kernel", "gfx942"]["ok"]


@needs_interpreter
def test_recorder_keys_launches_as_the_jit_specializes_them():
    x = torch.zeros(64)
    with triton_launches.capture(exclusive=True) as rec:
        for n in (16, 32, 17, 19, 1, 2**40):  # classes: %16, %16, other, other, ==1, i64
            _scale_kernel[(1,)](x, x, n, 2.0, BLOCK=16)
        _scale_kernel[(1,)](x, x[1:], 16, 3.0, BLOCK=16)  # unaligned pointer
        _scale_kernel[(1,)](x, x, 16, 2.0, BLOCK=32)  # another constexpr
        _scale_kernel[(1,)](x, x, 16, 2.0, BLOCK=16, enable_fp_fusion=False)  # an option
        for n in (16, 17, 1):
            _scale_dns_kernel[(1,)](x, x, n, 2.0, BLOCK=16)
    plain = [r for r in rec.records() if r["kernel"].endswith(":_scale_kernel")]
    classes = sorted(
        (p["n"]["kind"], p["n"].get("type"), p["n"].get("attr"), p["out_ptr"]["attr"],
         p["BLOCK"]["value"], json.dumps(r["options"]))
        for r in plain for p in [r["params"]])
    assert classes == sorted([
        ("int", "i32", "D", "D", 16, "{}"),
        ("int", "i32", "", "D", 16, "{}"),
        ("constexpr", None, None, "D", 16, "{}"),
        ("int", "i64", "D", "D", 16, "{}"),
        ("int", "i32", "D", "", 16, "{}"),
        ("int", "i32", "D", "D", 32, "{}"),
        ("int", "i32", "D", "D", 16, '{"enable_fp_fusion": false}'),
    ])
    assert len({triton_launches.record_key(r) for r in rec.records()}) == len(rec.records())
    by_launches = {r["params"]["n"].get("value"): r["launches"] for r in plain
                   if r["params"]["BLOCK"]["value"] == 16 and not r["options"]}
    assert by_launches[16] == 2 and by_launches[17] == 2  # 16 & 32, 17 & 19: one key each
    dns = [r for r in rec.records() if r["kernel"].endswith(":_scale_dns_kernel")]
    assert len(dns) == 1 and dns[0]["launches"] == 3 and dns[0]["params"]["n"]["attr"] is None
    assert dns[0]["params"]["x_ptr"]["dtype"] == "float32"
    assert dns[0]["params"]["scale"] == {"kind": "float", "type": "fp32", "value": 2.0}
