"""The results schema (STYLE rule 7): one row per measured op, appended as JSON lines
and CSV to ``bench/results/``.

``baseline_ratio`` is baseline time / op time: above 1 the gradpack op is faster.
``pct_of_copy`` is the op's achieved GB/s over the GB/s of a copy of the same input, and
``copy_ratio`` the op's time over that copy's time (the issue targets' unit), both
measured in the same run on the same device. ``first_call_s`` is the op's first call in
the process: it includes compiling (Triton, numba) or loading the compiled code from the
disk cache. ``run`` groups the rows of one invocation.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

import gradpack

FIELDS = (
    "run", "op", "spec", "backend", "device", "device_name", "size", "time_s", "gbps",
    "pct_of_copy", "copy_ratio", "first_call_s", "baseline", "baseline_time_s",
    "baseline_ratio", "version", "timestamp", "note",
)
JSONL = "results.jsonl"
CSV = "results.csv"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def version() -> str:
    """``gradpack.__version__``, plus the git commit when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{gradpack.__version__}+g{sha}" if sha else gradpack.__version__


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def row(**values) -> dict:
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"not in the results schema: {sorted(unknown)}")
    return {name: values.get(name) for name in FIELDS}


def append(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """Append ``rows`` to ``out_dir/results.jsonl`` and ``out_dir/results.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, csv_path = out_dir / JSONL, out_dir / CSV
    with jsonl.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return jsonl, csv_path


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
