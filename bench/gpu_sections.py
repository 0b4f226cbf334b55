"""The sections of the prepared GPU check (:mod:`.gpu_check` runs each in its own process
with its own budget): ``twins`` (triton on the device vs the CPU torch path, bit for bit),
``pytest_twins`` (the twin test files on the device), ``bench`` (the suite at 100M
elements) and ``ddp`` (the hook on NCCL and gloo, equal to ``gradpack.simulate``). Each
takes a ``device`` and a ``deadline`` and returns check records, so the tests run them on
CPU tensors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from gradpack.compressors import from_spec, names
from gradpack.kernels.fusion import Fusion

from . import results

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


def error_text(e: BaseException) -> str:
    """One line naming an exception, for a failure record."""
    return f"{type(e).__name__}: {e}".strip()[:2000]


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
                recs.append(check("twins", name, False, time.perf_counter() - t0, error_text(e)))
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
                                  error_text(e)))
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
            out[key] = {"error": error_text(e)}
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
                recs.append(check("ddp", run, False, time.perf_counter() - t0, error_text(e)))
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
