"""Compile recorded Triton specializations for real GPU targets, without a GPU.

    python tests/gpu_compile.py LAUNCHES.json --arch sm_80 --arch sm_90 --arch gfx942

``LAUNCHES.json`` comes from a test session under ``TRITON_INTERPRET=1`` (``tests/conftest.py``
records it; ``--triton-launches PATH``). This process must run without the interpreter: it
installs a stand-in Triton driver whose current target is the GPU asked for, rebuilds CPU
arguments with the recorded dtypes, alignments and values (checked to give the recorded JIT
key), and runs ``kernel.warmup(...)``: Triton's whole pipeline to PTX and a cubin (the ptxas in
the triton wheel) or to AMDGCN and an hsaco, exactly as the first launch on that GPU would.

Writes one JSON line per (specialization, target) to ``OUT/gpu_compile.jsonl``: registers,
spills, shared memory, compile time (NVIDIA: ptxas ``-v`` log and the cubin's resource usage,
spills in bytes; AMD: the kernel descriptor, spills in registers), and a summary table to
``OUT/gpu_compile.md``. Exits 1 naming the kernel, target and constexprs of every failure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

from triton_launches import FORMAT, record_key

TARGETS = {  # name -> GPUTarget(backend, arch, warp size)
    "sm_80": ("cuda", 80, 32),
    "sm_90": ("cuda", 90, 32),
    "gfx942": ("hip", "gfx942", 64),
}
# largest shared memory / LDS a block may use (A100 163 KiB, H100 227 KiB, MI300 64 KiB): the
# driver checks it at load time, so a kernel over it compiles and then fails on the GPU
SHARED_LIMIT = {"sm_80": 166912, "sm_90": 232448, "gfx942": 65536}
BACKENDS = {"cuda": "nvidia", "hip": "amd"}  # GPUTarget.backend -> triton.backends name
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "bench" / "results"


class StandInDriver:
    """Just enough of a Triton driver for the JIT to compile for ``target``: each target is its
    own "device", so the JIT keeps one binder and cache per target."""

    def __init__(self, name: str) -> None:
        from triton.backends.compiler import GPUTarget

        self.name = name
        self.target = GPUTarget(*TARGETS[name])

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.name

    def get_current_stream(self, device=None):
        return 0


def available_targets() -> list[str]:
    from triton.backends import backends

    return [name for name, t in TARGETS.items() if BACKENDS[t[0]] in backends]


def constexprs(record: dict) -> str:
    pairs = [f"{k}={p['value']}" for k, p in record["params"].items() if p["kind"] == "constexpr"]
    return ", ".join(pairs + [f"{k}={v}" for k, v in record["options"].items()])


def load_kernel(record: dict):
    """The jitted function ``module:qualname``, imported by name or else from its file."""
    module_name, qualname = record["kernel"].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        path = Path(record["file"])
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _value(p: dict):
    v = p["value"]
    if isinstance(v, dict) and "tl_dtype" in v:
        import triton.language as tl

        return getattr(tl, v["tl_dtype"])
    if isinstance(v, dict) and "tuple" in v:
        return tuple(_value({"value": x}) for x in v["tuple"])
    return v


def _tensor(p: dict):
    """A CPU tensor of the recorded dtype whose pointer has the recorded 16-byte alignment."""
    import torch
    import triton
    import triton.language as tl

    dtype = getattr(torch, p["dtype"], None)
    wrap = None
    if not isinstance(dtype, torch.dtype):  # a triton-only dtype (triton.reinterpret)
        wrap, dtype = getattr(tl, p["dtype"]), torch.uint8
    base = torch.zeros(64, dtype=dtype)
    aligned = p["attr"] != ""
    for offset in range(16):
        t = base[offset:]
        if (t.data_ptr() % 16 == 0) == aligned:
            return triton.reinterpret(t, wrap) if wrap else t
    raise ValueError(f"cannot build a {p['dtype']} pointer with alignment {p['attr']!r}")


def build_args(record: dict) -> dict:
    build = {"tensor": _tensor, "constexpr": _value, "int": _value, "float": _value,
             "bool": _value}
    return {name: build[p["kind"]](p) for name, p in record["params"].items()}


def _ptxas_resources(log: str) -> dict:
    out = {}
    if m := re.search(r"Used (\d+) registers", log):
        out["registers"] = int(m.group(1))
    if m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log):
        out["spill_stores"], out["spill_loads"] = int(m.group(1)), int(m.group(2))
        out["spills"] = out["spill_stores"] + out["spill_loads"]
    if m := re.search(r"(\d+) bytes stack frame", log):
        out["stack_bytes"] = int(m.group(1))
    return out


def _cubin_resources(cubin: bytes) -> dict:
    """Registers and local memory from the cubin itself (the wheel's cuobjdump)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True,
                              text=True, timeout=60).stdout
    out = {}
    if m := re.search(r"REG:(\d+)", text):
        out["registers"] = int(m.group(1))
    if m := re.search(r"LOCAL:(\d+)", text):
        out["local_bytes"] = int(m.group(1))
    return out


def _amd_resources(amdgcn: str) -> dict:
    def field(name):
        m = re.search(rf"\.{name}:\s+(\d+)", amdgcn)
        return int(m.group(1)) if m else None

    vgpr_spill, sgpr_spill = field("vgpr_spill_count"), field("sgpr_spill_count")
    return {"registers": field("vgpr_count"), "sgprs": field("sgpr_count"),
            "spills": None if vgpr_spill is None else vgpr_spill + (sgpr_spill or 0),
            "local_bytes": field("private_segment_fixed_size")}


def compile_one(record: dict, target: str) -> dict:
    """Compile one specialization for one target; a report row (never raises)."""
    import triton
    from triton import knobs

    row = {"kernel": record["kernel"], "target": target, "constexprs": constexprs(record),
           "signature": {k: p.get("dtype", p.get("type")) for k, p in record["params"].items()
                         if p["kind"] != "constexpr"}}
    started = time.perf_counter()
    try:
        driver = StandInDriver(target)
        triton.runtime.driver.set_active(driver)
        kernel = load_kernel(record)
        args = build_args(record)
        _check_key(kernel, args, record)
        knobs.nvidia.dump_ptxas_log = True
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = kernel.warmup(grid=(1,), **args, **record["options"])
        row["compile_s"] = round(time.perf_counter() - started, 3)
        row["ok"] = True
        row["shared_bytes"] = compiled.metadata.shared
        row["num_warps"] = compiled.metadata.num_warps
        if driver.target.backend == "cuda":
            row.update(_cubin_resources(compiled.asm["cubin"]))
            row.update(_ptxas_resources(log.getvalue()))
            row.setdefault("spills", None)  # no ptxas log: the cubin came from the cache
        else:
            row.update(_amd_resources(compiled.asm["amdgcn"]))
        if row["shared_bytes"] > SHARED_LIMIT[target]:
            row["ok"] = False
            row["error"] = (f"OutOfResources: {row['shared_bytes']} bytes of shared memory, "
                            f"{target} allows {SHARED_LIMIT[target]}")
    except Exception as e:
        row["compile_s"] = round(time.perf_counter() - started, 3)
        row["ok"] = False
        row["error"] = f"{type(e).__name__}: {e}"[:4000]
    return row


def _check_key(kernel, args: dict, record: dict) -> None:
    """The rebuilt arguments must give the JIT key that was recorded."""
    from triton_launches import specialize

    fields = ("kind", "type", "attr", "dtype")
    rebuilt = specialize(kernel, (), {**args, **record["options"]})[1]["params"]
    diff = [name for name, p in record["params"].items()
            if [p.get(f) for f in fields] != [rebuilt[name].get(f) for f in fields]]
    if diff:
        raise RuntimeError(f"rebuilt arguments {diff} do not reproduce the recorded JIT key")


def _compile_many(tasks: list[tuple[dict, str]]) -> list[dict]:
    return [compile_one(record, target) for record, target in tasks]


def run(records: list[dict], targets: list[str], jobs: int) -> list[dict]:
    tasks = [(r, t) for t in targets for r in records]
    if jobs <= 1:
        return _compile_many(tasks)
    chunks = [tasks[i::jobs] for i in range(jobs)]
    ctx = get_context("spawn")  # fresh interpreters: no TRITON_INTERPRET, no CUDA state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        parts = list(pool.map(_compile_many, chunks))
    rows = [row for part in parts for row in part]
    return sorted(rows, key=lambda r: (r["kernel"], r["target"], r["constexprs"]))


def _summary(rows: list[dict], stamp: str, wall: float) -> str:
    kernels = sorted({r["kernel"] for r in rows})
    targets = sorted({r["target"] for r in rows})
    failed = [r for r in rows if not r["ok"]]
    lines = [
        f"Run {stamp}: {len(rows)} compiles ({len(rows) // max(len(targets), 1)} "
        f"specializations of {len(kernels)} kernels x {', '.join(targets)}), "
        f"{len(failed)} failed, {wall:.0f} s wall.",
        "",
        "Registers: per thread (NVIDIA) / VGPRs per lane (AMD); spills: bytes of spill stores"
        " + loads (NVIDIA) / spilled registers (AMD); shared: bytes of shared memory / LDS.",
        "",
        "| kernel | target | specializations | max registers | max spills | max shared (B) |"
        " compile s (total) | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def top(group, field):
        vals = [r.get(field) for r in group if r.get(field) is not None]
        return str(max(vals)) if vals else "-"

    for kernel in kernels:
        for target in targets:
            group = [r for r in rows if r["kernel"] == kernel and r["target"] == target]
            if not group:
                continue
            bad = sum(not r["ok"] for r in group)
            total = sum(r["compile_s"] for r in group)
            lines.append(
                f"| `{kernel}` | {target} | {len(group)} | {top(group, 'registers')} | "
                f"{top(group, 'spills')} | {top(group, 'shared_bytes')} | {total:.1f} | {bad} |")
    if failed:
        lines += ["", "Failures:", ""]
        lines += [f"- `{r['kernel']}` [{r['target']}] ({r['constexprs']}): "
                  f"{r['error'].splitlines()[0] if r['error'] else ''}" for r in failed]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out: Path, wall: float) -> None:
    import triton

    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with open(out / "gpu_compile.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({**row, "triton": triton.__version__, "timestamp": stamp}) + "\n")
    (out / "gpu_compile.md").write_text(_summary(rows, stamp, wall))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("launches", type=Path, nargs="+",
                        help="launch files (several are merged, one entry per JIT key)")
    parser.add_argument("--arch", action="append", choices=sorted(TARGETS),
                        help="target (repeatable); default: sm_80, sm_90 and gfx942 if the "
                             "triton wheel has the AMD backend")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reuse-cache", action="store_true",
                        help="use Triton's own cache (TRITON_CACHE_DIR or ~/.triton/cache): a "
                             "hit is a specialization that compiled before with the same "
                             "source, options and toolchain (its spills are then not reported)."
                             " Default: a fresh cache, so every kernel compiles and its ptxas "
                             "log is read")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("run without TRITON_INTERPRET=1: this compiles for real GPU targets")
    merged, errors = {}, []
    for path in args.launches:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            parser.error(f"{path}: not a launches file of format {FORMAT}")
        errors += doc["errors"]
        for record in doc["specializations"]:
            merged.setdefault(record_key(record), record)
    if errors:
        print(f"gpu_compile: {len(errors)} launches were not recorded: {errors}")
        return 1
    available = available_targets()
    targets = args.arch or [t for t in TARGETS if t in available]
    missing = [t for t in targets if t not in available]
    if missing:
        parser.error(f"this triton wheel cannot target {missing}")
    records = [merged[k] for k in sorted(merged)]
    with tempfile.TemporaryDirectory() as fresh:
        if not args.reuse_cache:
            os.environ["TRITON_CACHE_DIR"] = fresh
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # 3.9's default, minus a warning
        started = time.perf_counter()
        rows = run(records, targets, args.jobs)
        wall = time.perf_counter() - started
    write_report(rows, args.out_dir, wall)
    failed = [r for r in rows if not r["ok"]]
    print(f"gpu_compile: {len(records)} specializations of "
          f"{len({r['kernel'] for r in records})} kernels x {targets}: {len(rows) - len(failed)} "
          f"compiled, {len(failed)} failed, {wall:.1f} s; report in {args.out_dir}")
    for r in failed:
        print(f"FAILED {r['kernel']} [{r['target']}] ({r['constexprs']}):\n    "
              + r["error"].replace("\n", "\n    "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
