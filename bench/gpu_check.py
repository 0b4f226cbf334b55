"""The prepared GPU check (issue 11, item 5): ``python -m gradpack.bench.gpu_check`` or
``gradpack bench --gpu-check``.

On a machine with CUDA it runs, in under 8 minutes, each section in its own process with
its own time budget (a failure, crash or hang in one is recorded; the others still run):

- ``twins``: for every registered compressor family (spec list :data:`TWIN_SPECS`, a family
  without one is a failure) at several sizes, odd ones included: the payload bytes of
  ``backend="triton"`` on CUDA equal the CPU torch path's bit for bit, and so do
  decode-and-sum and two fused EF21 and EF14 steps (state included);
- ``pytest``: from a checkout, the twin test files on CUDA (their ``tdevice`` is CUDA there);
- ``bench``: the benchmark suite (:mod:`.suite`) at 100M elements against a same-device
  copy (GB/s, % of copy, x torch.topk), rows appended to ``--out/results.jsonl`` and ``.csv``;
- ``ddp``: the DDP hook on a 1-rank NCCL group and on a 2-rank gloo group on CUDA tensors, a
  few steps of several algorithms, parameters bit-identical to ``gradpack.simulate``'s.

Every result, with the device name, torch/triton versions and timings, goes to
``--out/gpu_check_<device>.json``; a summary table is printed. Exit status 1 if any check
failed. Without CUDA it says so, lists what it would run, and exits 0. The section
functions (:mod:`.gpu_sections`) take a ``device`` so that the tests run them on CPU tensors;
this module runs them, each in its own process, and writes the report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from . import results
from .gpu_sections import (  # noqa: F401  (re-exported: the sections' public names)
    DDP_CASES,
    DDP_RUNS,
    DDP_STEPS,
    TWIN_SIZES,
    TWIN_SPECS,
    TWIN_TESTS,
    bench,
    check,
    checkout,
    ddp,
    pytest_twins,
    twin_checks,
    twins,
)
from .gpu_sections import (
    error_text as _error,
)

TOTAL_S = 470  # every section, startup and grace included: under 8 minutes
GRACE_S = 15.0  # past its budget a section is killed after this long
@dataclass
class Section:
    name: str
    function: str  # "module:function", run in its own process
    budget_s: float
    what: str


MODULE = "gradpack.bench.gpu_sections"
SECTIONS = [
    Section("twins", f"{MODULE}:twins", 100,
            f"triton-on-CUDA vs CPU torch, bit for bit: {len(TWIN_SPECS)} specs x sizes "
            f"{TWIN_SIZES}: encode, decode_sum, fused EF21 and EF14 steps"),
    Section("pytest", f"{MODULE}:pytest_twins", 90,
            f"pytest -k triton {' '.join(TWIN_TESTS)} on CUDA (from a checkout)"),
    Section("bench", f"{MODULE}:bench", 150,
            "the benchmark suite at 100M elements vs a same-device copy (GB/s, % of copy, "
            "x torch.topk); rows to results.jsonl/csv"),
    Section("ddp", f"{MODULE}:ddp", 90,
            f"DDP hook on {', '.join(f'{b} x{w}' for b, w in DDP_RUNS)} ranks, CUDA tensors, "
            f"{len(DDP_CASES)} algorithms, {DDP_STEPS} steps each, equal to gradpack.simulate"),
]


def _first_line(text: str) -> str:
    return (text or "").splitlines()[0] if text else ""


def _entry(function: str, device: str, budget_s: float, kwargs: dict, conn) -> None:
    os.setsid()  # its own process group: a timeout kills the section and its children
    try:
        module, name = function.split(":")
        fn = getattr(importlib.import_module(module), name)
        conn.send(("ok", fn(device, deadline=time.monotonic() + budget_s, **kwargs)))
    except BaseException as e:  # noqa: BLE001 - sent to the parent as the section's failure
        conn.send(("error", f"{_error(e)}\n{traceback.format_exc()[-3000:]}"))
    conn.close()


def run_section(section: Section, device: str, kwargs: dict | None = None,
                budget_s: float | None = None, grace_s: float = GRACE_S) -> dict:
    """Run one section in a spawned process, for ``budget_s`` (default: its own budget)
    plus ``grace_s``; its records, or one failed record saying why."""
    budget_s = section.budget_s if budget_s is None else budget_s
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_entry, args=(section.function, device, budget_s,
                                            kwargs or {}, send))
    t0 = time.perf_counter()
    proc.start()
    send.close()
    status, checks = "ok", []
    if recv.poll(budget_s + grace_s):
        try:
            kind, value = recv.recv()
        except EOFError:
            kind, value = "error", "the section process died without a result"
        if kind == "ok":
            checks = value
        else:
            status, checks = "failed", [check(section.name, "section", False, 0.0, value)]
    else:
        status = "timed out" if proc.is_alive() else "crashed"
        checks = [check(section.name, "section", False, time.perf_counter() - t0,
                        f"{status} (budget {budget_s:.0f} s + {grace_s:.0f} s grace)")]
    proc.join(5)
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.join(5)
    if status == "ok" and proc.exitcode not in (0, None):
        status = "crashed"
    if status == "ok" and not all(c["ok"] for c in checks):
        status = "failed"
    return dict(status=status, seconds=round(time.perf_counter() - t0, 2),
                budget_s=round(budget_s, 1), checks=checks)


def environment(device: str) -> dict:
    dev = torch.device(device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(device=str(dev), device_name=results.device_name(dev), torch=torch.__version__,
                triton=triton_version, cuda=torch.version.cuda, gradpack=results.version(),
                started=results.now())


def report_path(out: Path, device_name: str) -> Path:
    return Path(out) / f"gpu_check_{re.sub(r'[^A-Za-z0-9._-]+', '-', device_name).strip('-')}.json"


def summary(report: dict) -> str:
    lines = [f"GPU check on {report['device_name']} (torch {report['torch']}, triton "
             f"{report['triton']}, gradpack {report['gradpack']}): "
             f"{'PASSED' if report['ok'] else 'FAILED'} in {report['total_s']:.0f} s", "",
             f"{'section':<8} {'status':<10} {'checks':>9} {'seconds':>8} {'budget':>7}"]
    for name, s in report["sections"].items():
        ok = sum(c["ok"] for c in s["checks"])
        lines.append(f"{name:<8} {s['status']:<10} {ok:>4}/{len(s['checks']):<4} "
                     f"{s['seconds']:>8.1f} {s['budget_s']:>7.0f}")
    failed = [c for s in report["sections"].values() for c in s["checks"] if not c["ok"]]
    if failed:
        lines += ["", f"{len(failed)} failed check(s):"]
        lines += [f"  [{c['section']}] {c['name']}: {_first_line(c['detail'])}"
                  for c in failed[:30]]
    bench_rows = report["sections"].get("bench", {}).get("checks", [])
    if bench_rows:
        lines += ["", "bench (100M elements):"] + [f"  {c['name']}: {c['detail']}"
                                                 for c in bench_rows if c["ok"]]
    return "\n".join(lines)


def would_run() -> str:
    lines = ["No CUDA device is present: the GPU check runs only on a machine with CUDA.",
             f"On one it runs, in under {TOTAL_S // 60} minutes, each section in its own "
             "process with its own budget:"]
    lines += [f"  {s.name:<7} ({s.budget_s:.0f} s) {s.what}" for s in SECTIONS]
    lines.append("and writes bench/results/gpu_check_<device>.json. Nothing was run.")
    return "\n".join(lines)


def run_check(device: str, out: Path, sections=SECTIONS, kwargs=None, total_s=TOTAL_S,
              grace_s=GRACE_S, log=print) -> tuple[dict, Path]:
    """Run ``sections`` on ``device`` within ``total_s``; write and return the report and
    its path."""
    report = environment(device)
    t0 = time.perf_counter()
    report["sections"] = {}
    for s in sections:
        budget = min(s.budget_s, total_s - (time.perf_counter() - t0) - grace_s)
        if budget < 1:
            report["sections"][s.name] = dict(
                status="not run", seconds=0.0, budget_s=0.0,
                checks=[check(s.name, "section", False, 0.0, "not run: total budget spent")])
            continue
        log(f"[gpu-check] {s.name}: {s.what} (budget {budget:.0f} s)")
        report["sections"][s.name] = run_section(s, device, (kwargs or {}).get(s.name), budget,
                                                 grace_s)
        log(f"[gpu-check] {s.name}: {report['sections'][s.name]['status']} "
            f"({report['sections'][s.name]['seconds']:.1f} s)")
    report["total_s"] = round(time.perf_counter() - t0, 2)
    report["ok"] = all(s["status"] == "ok" for s in report["sections"].values())
    path = report_path(out, report["device_name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradpack.bench.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--sections", default=",".join(s.name for s in SECTIONS),
                        help="comma-separated subset of the sections")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(would_run())
        return 0
    chosen = [s for s in SECTIONS if s.name in args.sections.split(",")]
    report, path = run_check("cuda", args.out, chosen, kwargs={"bench": {"out": str(args.out)}})
    print(summary(report))
    print(f"\nreport: {path}; bench rows: {args.out / results.JSONL}")
    return exit_status(report)


def exit_status(report: dict) -> int:
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
