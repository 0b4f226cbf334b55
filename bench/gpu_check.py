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
functions take a ``device`` so that the tests run them on CPU tensors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from gradpack.compressors import from_spec, names
from gradpack.kernels.fusion import Fusion

from . import results

TOTAL_S = 470  # every section, startup and grace included: under 8 minutes
GRACE_S = 15.0  # past its budget a section is killed after this long
TWIN_SPECS = [
    "identity", "fp16", "bf16", "sign", "ssign", "qsgd:7", "qsgd:3:100", "qsgd:255:64",
    "qsgd:1:64:inf", "qsgd:7:1000:inf", "topk:0.01", "topk:0.05:approx", "topk:1",
    "randk:0.01", "randk:0.3:biased", "randk:0.5:qsgd:1:512:inf", "randk:0.2:ssign",
]
TWIN_SIZES = [1, 7, 4097, 100_003, 1_000_001]
FUSIONS = {
    "ef21": Fusion(residual="sub", update="add"),
    "ef14": Fusion(residual="error", gamma=0.1, update="error"),
}
TWIN_TESTS = ["tests/test_elementwise_twins.py", "tests/test_topk.py", "tests/test_randk.py",
              "tests/test_treesum.py", "tests/test_bitpack.py"]
DDP_CASES = [("ef21", "topk:0.01", {}), ("ef14", "sign", {}), ("dcgd", "qsgd:7", {}),
             ("ef21", "randk:0.1", {}), ("dore", "qsgd:4", {"gamma": 0.005})]
DDP_RUNS = [("nccl", 1), ("gloo", 2)]
DDP_DIM, DDP_STEPS, DDP_LR = 4096, 4, 0.005


# -- records --------------------------------------------------------------------------------
def check(section: str, name: str, ok: bool, seconds: float, detail: str = "") -> dict:
    return dict(section=section, name=name, ok=bool(ok), seconds=round(seconds, 4),
                detail=detail)


def differ(got: torch.Tensor, want: torch.Tensor) -> str:
    """'' when ``got`` (any device) equals ``want`` bit for bit, else what differs."""
    got = got.detach().cpu().contiguous()
    want = want.detach().cpu().contiguous()
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{got.dtype}{list(got.shape)} != {want.dtype}{list(want.shape)}"
    a, b = got.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8)
    bad = torch.nonzero(a != b).view(-1)
    if bad.numel() == 0:
        return ""
    return f"{bad.numel()} of {a.numel()} bytes differ, first at byte {int(bad[0])}"


def _x(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * seed + d)
    x = torch.randn(d, generator=g) * 3
    x[::11] = 0.0  # ties and zero bins for Top-K
    return x


# -- section: twins -------------------------------------------------------------------------
def twin_checks(spec: str, d: int, device, *, backend: str = "triton",
                make=from_spec) -> list[tuple[str, str]]:
    """``[(what, difference)]`` of ``spec`` at ``d`` elements: ``backend`` on ``device``
    against the torch backend on CPU; an empty difference is a match."""
    dev, ref = make(spec, backend=backend), make(spec, backend="torch")
    xs, seeds = [_x(d, s) for s in range(3)], [11, 12, 13]
    pr = torch.stack([ref.encode(x, seed=s) for x, s in zip(xs, seeds, strict=True)])
    pt = torch.stack([dev.encode(x.to(device), seed=s) for x, s in zip(xs, seeds, strict=True)])
    out = [("encode", differ(pt, pr))]
    base = _x(d, 9)
    want = ref.decode_sum(pr, d, seeds=seeds, out=base.clone(), scale=1 / 3, add=True)
    got = dev.decode_sum(pr.to(device), d, seeds=seeds, out=base.to(device), scale=1 / 3,
                         add=True)
    out.append(("decode_sum", differ(got, want)))
    for name, fusion in FUSIONS.items():
        hr, ht = _x(d, 5), _x(d, 5).to(device)
        found = ""
        for step in range(2):
            found = found or differ(dev.step(fusion, xs[step].to(device), {"h": ht}, seed=step),
                                    ref.step(fusion, xs[step], {"h": hr}, seed=step))
            found = found or (f"state h: {differ(ht, hr)}" if differ(ht, hr) else "")
        out.append((name, found))
    return out


def twins(device, *, deadline: float, specs=None, sizes=None, backend: str = "triton",
          make=from_spec) -> list[dict]:
    specs = TWIN_SPECS if specs is None else specs
    recs = []
    covered = {s.split(":")[0] for s in specs}
    for family in sorted(set(names()) - covered):
        recs.append(check("twins", f"family {family}", False, 0.0,
                          f"no spec of {family!r} in the twin list (add one to TWIN_SPECS)"))
    for spec in specs:
        for d in TWIN_SIZES if sizes is None else sizes:
            name = f"{spec} d={d}"
            if time.monotonic() > deadline:
                recs.append(check("twins", name, False, 0.0, "not run: section budget spent"))
                continue
            t0 = time.perf_counter()
            try:
                found = twin_checks(spec, d, device, backend=backend, make=make)
            except Exception as e:  # noqa: BLE001 - recorded, the other specs still run
                recs.append(check("twins", name, False, time.perf_counter() - t0, _error(e)))
                continue
            bad = "; ".join(f"{what}: {diff}" for what, diff in found if diff)
            recs.append(check("twins", name, not bad, time.perf_counter() - t0,
                              bad or "encode, decode_sum, ef21, ef14 bit-identical"))
    return recs


# -- section: pytest on the twin test files ---------------------------------------------------
def checkout() -> Path | None:
    """The repository root when gradpack runs from a checkout with its tests."""
    root = Path(__file__).resolve().parent.parent
    return root if all((root / f).exists() for f in TWIN_TESTS) else None


def pytest_twins(device, *, deadline: float, files=None) -> list[dict]:
    root = checkout()
    if root is None:
        return [check("pytest", "twin test files", True, 0.0, "skipped: not a checkout")]
    env = dict(os.environ, TRITON_INTERPRET="0" if torch.device(device).type == "cuda" else "1")
    # -k triton: the tests marked triton or named for it (their tdevice is CUDA here)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton",
           *(files or TWIN_TESTS)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return [check("pytest", "twin test files", False, time.perf_counter() - t0,
                      "timed out")]
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
    return [check("pytest", "twin test files", done.returncode == 0, time.perf_counter() - t0,
                  tail[0])]


# -- section: bench -------------------------------------------------------------------------
def bench(device, *, deadline: float, sizes=(10**8,), specs=None, out="bench/results",
          repeats: int = 5, backend: str = "triton") -> list[dict]:
    """The suite's rows (:mod:`.suite`), one spec at a time so that the budget is checked
    between specs and every measured row is already written when it runs out."""
    from .roofline import OPS, copy_gbps
    from .suite import Run, bench_spec, default_specs

    dev = torch.device(device)
    logged: list[str] = []
    run = Run(dev, backend, repeats, 8.0, log=logged.append)
    gen = torch.Generator(device=dev).manual_seed(0)
    recs, written = [], 0
    for d in sizes:
        x = torch.randn(d, generator=gen, device=dev)
        copy_s, copy = copy_gbps(x, repeats=repeats)
        run.add("copy", "", d, copy_s, 8 * d, copy, note="roofline: dst.copy_(x), fp32")
        for spec in specs or default_specs():
            if time.monotonic() > deadline:
                recs.append(check("bench", f"{spec} d={d}", False, 0.0,
                                  "not run: section budget spent"))
                continue
            t0 = time.perf_counter()
            try:
                bench_spec(run, spec, x, copy, 4, OPS)
            except Exception as e:  # noqa: BLE001 - recorded, the other specs still run
                recs.append(check("bench", f"{spec} d={d}", False, time.perf_counter() - t0,
                                  _error(e)))
            results.append(run.rows[written:], Path(out))
            written = len(run.rows)
    for line in logged:  # an op the suite could not run ("not supported", "skipped")
        if "not supported" in line or "skipped" in line:
            recs.append(check("bench", " ".join(line.split()[:3]), False, 0.0, line.strip()))
    for r in run.rows:
        ratio = f", {r['baseline_ratio']:.2f}x {r['baseline']}" if r["baseline_ratio"] else ""
        recs.append(check("bench", f"{r['spec'] or '-'} {r['op']} d={r['size']}", True,
                          r["time_s"], f"{r['gbps']:.1f} GB/s, {r['pct_of_copy']:.0f}% of copy"
                          f"{ratio}"))
    return recs


# -- section: ddp ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, dist_backend, device, port, out_dir, cases, steps, backend):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import gradpack.ddp
    from gradpack.algorithms import from_spec as algorithm
    from gradpack.sim.core import simulate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    dist.init_process_group(dist_backend, init_method="env://")
    out = {}
    for name, spec, hp in cases:
        key = f"{name} {spec}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alg = [algorithm(name, spec, backend=backend, seed=11, **hp) for _ in range(2)]
            model = _Problem(rank, dev)
            ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
            gradpack.ddp.register(ddp, alg[0])
            opt = torch.optim.SGD(ddp.parameters(), lr=DDP_LR)
            for _ in range(steps):
                opt.zero_grad()
                ddp().backward()
                opt.step()
            out[key] = {"ddp": model.x.detach().cpu()}
            if rank == 0:
                fns = [_Problem(i, dev).grad_fn() for i in range(world)]
                hist = simulate(alg[1], fns, _Problem.x0(dev), steps=steps, lr=DDP_LR, seed=11)
                out[key]["sim"] = hist.x.detach().cpu()
        except Exception as e:  # noqa: BLE001 - reported per case
            out[key] = {"error": _error(e)}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)  # no process-group teardown races at interpreter exit


class _Problem(torch.nn.Module):
    """Worker ``rank``'s least squares ``0.5 ||A x - b||^2``, one flat parameter (one bucket,
    one compression unit: the simulator's seeds), as in tests/test_ddp_equivalence.py."""

    def __init__(self, rank: int, device):
        super().__init__()
        self.x = torch.nn.Parameter(self.x0(device))
        g = torch.Generator().manual_seed(100 + rank)
        self.a = (torch.randn(32, DDP_DIM, generator=g) / DDP_DIM**0.5).to(device)
        self.b = torch.randn(32, generator=g).to(device)

    @staticmethod
    def x0(device) -> torch.Tensor:
        return torch.linspace(-1, 1, DDP_DIM, device=device)

    def forward(self):
        return 0.5 * ((self.a @ self.x - self.b) ** 2).sum()

    def grad_fn(self):
        def fn(x, step):
            with torch.no_grad():
                self.x.copy_(x)
            self.x.grad = None
            self().backward()
            return self.x.grad.clone()
        return fn


def ddp(device, *, deadline: float, runs=None, cases=None, steps: int = DDP_STEPS,
        backend: str = "triton") -> list[dict]:
    import tempfile

    recs = []
    for dist_backend, world in DDP_RUNS if runs is None else runs:
        run = f"{dist_backend} x{world}"
        if time.monotonic() > deadline:
            recs.append(check("ddp", run, False, 0.0, "not run: section budget spent"))
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                torch.multiprocessing.start_processes(
                    _ddp_worker, nprocs=world, join=True, start_method="spawn",
                    args=(world, dist_backend, str(device), _free_port(), tmp,
                          DDP_CASES if cases is None else cases, steps, backend))
                ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
            except Exception as e:  # noqa: BLE001 - recorded, the next run still goes
                recs.append(check("ddp", run, False, time.perf_counter() - t0, _error(e)))
                continue
        seconds = (time.perf_counter() - t0) / max(1, len(ranks[0]))
        for key, r0 in ranks[0].items():
            errors = [r[key]["error"] for r in ranks if "error" in r[key]]
            if errors:
                recs.append(check("ddp", f"{run} {key}", False, seconds, errors[0]))
                continue
            bad = [f"rank {i} != rank 0: {d}" for i, r in enumerate(ranks)
                   if (d := differ(r[key]["ddp"], r0["ddp"]))]
            if d := differ(r0["ddp"], r0["sim"]):
                bad.append(f"DDP != simulator: {d}, max |diff| "
                           f"{(r0['ddp'] - r0['sim']).abs().max():.3g}")
            if not differ(r0["ddp"], _Problem.x0("cpu")):
                bad.append("parameters never moved")
            recs.append(check("ddp", f"{run} {key}", not bad, seconds,
                              "; ".join(bad) or f"{steps} steps, bit-identical to the simulator"))
    return recs


# -- running the sections -------------------------------------------------------------------
@dataclass
class Section:
    name: str
    function: str  # "module:function", run in its own process
    budget_s: float
    what: str


MODULE = "gradpack.bench.gpu_check"  # not __name__: it is "__main__" under python -m
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


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:2000]


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
