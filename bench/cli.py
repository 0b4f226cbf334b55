"""``gradpack bench``: kernel throughput as a fraction of a same-run copy, beside baselines.

Rows go to ``--out`` (default ``bench/results``) as JSON lines and CSV; ``--table``
prints the markdown table of the latest run in a results file instead of benchmarking.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import results
from .roofline import OPS
from .table import markdown


def _sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=_sizes, default=None,
                        help="comma-separated element counts (default: 1e6,1e7 on CPU, "
                             "1e6,1e7,1e8 on CUDA)")
    parser.add_argument("--specs", default=None,
                        help="comma-separated compressor specs (default: every registered one)")
    parser.add_argument("--ops", default=",".join(OPS),
                        help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per op (median)")
    parser.add_argument("--payloads", type=int, default=4, help="n payloads for decode_sum")
    parser.add_argument("--max-op-s", type=float, default=8.0,
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
        print(markdown(results.load(args.out / results.JSONL)))
        return 0
    if args.gpu_check:
        from .gpu_check import main as gpu_check

        return gpu_check(["--out", str(args.out)])
    from .suite import bench, default_specs

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = args.sizes or ([10**6, 10**7] + ([10**8] if device.type == "cuda" else []))
    specs = args.specs.split(",") if args.specs else default_specs()
    rows = bench(sizes, specs, device=device, backend=args.backend, repeats=args.repeats,
                 ops=args.ops.split(","), n=args.payloads, max_op_s=args.max_op_s)
    jsonl, csv_path = results.append(rows, args.out)
    print(f"\n{len(rows)} rows appended to {jsonl} and {csv_path}\n")
    print(markdown(results.load(jsonl)))
    return 0
