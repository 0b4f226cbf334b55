"""``gradpack bench``: kernel throughput as a fraction of a same-run copy, beside baselines.

Rows go to ``--out`` (default ``bench/results``) as JSON lines and CSV; ``--table``
prints the markdown table of the latest run in a results file instead of benchmarking.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gradpack.cli_types import (
    flag_error,
    list_of,
    nonnegative_float,
    one_line,
    one_of,
    positive_int,
)

from . import results
from .roofline import OPS
from .table import markdown

#: elements one compressor call takes (:class:`gradpack.compressors.base.Compressor`)
MAX_NUMEL = 2**31


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=list_of(positive_int), default=None,
                        help="comma-separated element counts (default: 1e6,1e7 on CPU, "
                             "1e6,1e7,1e8 on CUDA)")
    parser.add_argument("--specs", type=list_of(str), default=None,
                        help="comma-separated compressor specs (default: every registered one)")
    parser.add_argument("--ops", type=list_of(one_of(OPS)), default=list(OPS),
                        help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"))
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed calls per op (median)")
    parser.add_argument("--payloads", type=positive_int, default=4,
                        help="n payloads for decode_sum")
    parser.add_argument("--max-op-s", type=nonnegative_float, default=8.0,
                        help="skip an op at a size when its time at the previous size predicts "
                             "more than this many seconds (0: never skip)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--table", action="store_true",
                        help="print the markdown table of the latest run in --out and exit")
    parser.add_argument("--gpu-check", action="store_true",
                        help="run the prepared GPU check (gradpack.bench.gpu_check): twins on "
                             "CUDA, the suite at 100M elements, DDP on NCCL and gloo; results "
                             "to --out/gpu_check_<device>.json (without CUDA: says so, exit 0)")


def run(args: argparse.Namespace) -> int:
    if args.table:
        path = args.out / results.JSONL
        if not path.is_file():
            raise flag_error("--out", f"no results file {str(path)!r} for --table")
        print(markdown(results.load(path)))
        return 0
    if args.out.exists() and not args.out.is_dir():
        raise flag_error("--out", f"{str(args.out)!r} exists and is not a folder")
    if args.gpu_check:
        from .gpu_check import main as gpu_check

        return gpu_check(["--out", str(args.out)])
    from .suite import bench, default_specs

    device = check_device(args.device, args.backend)
    sizes = args.sizes or ([10**6, 10**7] + ([10**8] if device.type == "cuda" else []))
    if max(sizes) >= MAX_NUMEL:
        raise flag_error("--sizes", f"a compressor takes at most 2**31 - 1 elements per call, "
                         f"got {max(sizes)}")
    specs = args.specs or default_specs()
    check_specs(specs, args.backend)
    rows = bench(sizes, specs, device=device, backend=args.backend, repeats=args.repeats,
                 ops=args.ops, n=args.payloads, max_op_s=args.max_op_s)
    jsonl, csv_path = results.append(rows, args.out)
    print(f"\n{len(rows)} rows appended to {jsonl} and {csv_path}\n")
    print(markdown(results.load(jsonl)))
    return 0


def check_device(name: str | None, backend: str) -> torch.device:
    """``--device`` (default: cuda if available, else cpu) as a device this process can
    allocate on, and ``--backend`` able to run there; else ``argparse.ArgumentError``."""
    from gradpack.kernels.backend import resolve

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, ValueError) as e:
        raise flag_error("--device", one_line(e)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise flag_error("--device", f"{name!r}: CUDA is not available here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise flag_error("--device", f"{name!r}: there are {torch.cuda.device_count()} GPUs")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, ValueError) as e:
        raise flag_error("--device", one_line(e)) from None
    try:
        resolve(backend, device)
    except ValueError as e:
        raise flag_error("--backend", one_line(e)) from None
    return device


def check_specs(specs: list[str], backend: str) -> None:
    """Every ``--specs`` item builds a compressor (as :func:`.suite.bench_spec` will)."""
    from gradpack.compressors import from_spec

    for spec in specs:
        try:
            from_spec(spec, backend=backend)
        except ValueError as e:
            raise flag_error("--specs", one_line(e)) from None
