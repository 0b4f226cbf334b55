"""``gradpack simulate``: paper-style experiments with n simulated workers on CPU.

Runs an experiment preset (:mod:`gradpack.experiments`: ``top1``, ``quadratic``, ``logreg``,
``dore``; seeds 000/001: ``local-sgd``, ``scaffold``, ``gossip``, ``choco``) or your own
``--run ALG/COMPRESSOR[/key=value...]`` list, prints a table and saves plots of ||grad f||^2
and loss against bits per worker and against steps (and against modelled time with
``--bandwidth``), plus the numbers as JSON. ``--graph`` and ``--local-steps`` override those
hyperparameters in every run that takes them; the table adds messages per worker and the
final consensus distance (mean ||x_i - x_bar||^2) for the model-per-worker methods.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from gradpack.algorithms import TOPOLOGIES, PeerAlgorithm, from_spec, hparam_names
from gradpack.cli_types import (
    checked_build,
    flag_error,
    hparam_value,
    nonnegative_float,
    one_line,
    positive_float,
    positive_int,
    seed,
)
from gradpack.comm import Link, graphs
from gradpack.sim.experiments import EXPERIMENTS, Experiment, Run, run_experiment
from gradpack.sim.problems import Problem

OVERRIDES = {"graph": "--graph", "local_steps": "--local-steps"}  # hparam -> its flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", choices=sorted(EXPERIMENTS), help="experiment preset")
    p.add_argument("--run", type=parse_run, action="append", default=None,
                   metavar="ALG/COMP[/k=v...]",
                   help="replace the preset's runs, e.g. ef21-sgdm/topk:0.1/eta=0.1/lr=0.5 "
                        "(lr in units of 1/L); repeatable")
    p.add_argument("--workers", "-n", type=positive_int, default=None,
                   help="simulated workers (default: the preset's, usually 10; not top1)")
    p.add_argument("--graph", default=None, help="ring, exp, one-peer-exp or complete: the graph "
                   "of dsgd, gradient-tracking and choco-sgd runs")
    p.add_argument("--local-steps", type=positive_int, default=None,
                   help="local iterations per round of local-sgd, scaffold and dsgd runs")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="steps (default: the preset's)")
    p.add_argument("--dataset", default="breast_cancer",
                   choices=["breast_cancer", "digits", "synthetic"], help="logreg data")
    p.add_argument("--topology", choices=TOPOLOGIES, default=None,
                   help="default: the preset's (dore: server)")
    p.add_argument("--bandwidth", type=positive_float, default=None,
                   help="modelled link bandwidth in bits/s (adds time plots)")
    p.add_argument("--latency", type=nonnegative_float, default=0.0,
                   help="modelled link latency, s (with --bandwidth)")
    p.add_argument("--target", type=positive_float, default=None, metavar="REL",
                   help="add the bits (up + down) per worker each run needs to reach loss <= "
                        "REL * f(x0), and their ratio to the first run's (default: the "
                        "preset's; dore: 1e-6)")
    p.add_argument("--bits", choices=["up", "total"], default="up",
                   help="x axis of the bits plots: uplink or uplink + downlink per worker")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch intra-op threads (the presets are many tiny ops: 1 is fastest)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--out", type=Path, default=Path("simulate-out"), help="output directory")
    p.add_argument("--no-plot", action="store_true")


def parse_run(text: str) -> Run:
    """``--run``'s converter: :meth:`Run.parse`, with a finite step size > 0 and finite
    hyperparameters."""
    try:
        run = Run.parse(text)
    except ValueError as e:
        message = one_line(e)
        raise argparse.ArgumentTypeError(message if text in message else
                                         f"run {text!r}: {message}") from None
    if not (math.isfinite(run.lr_scale) and run.lr_scale > 0):
        raise argparse.ArgumentTypeError(f"run {text!r}: lr must be a finite number > 0, got "
                                         f"{run.lr_scale!r}")
    for key, value in run.hparams.items():
        try:
            hparam_value(key, value)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"run {text!r}: {e}") from None
    return run


def check(args: argparse.Namespace, exp: Experiment, runs: tuple[Run, ...],
          overrides: dict) -> Problem:
    """Build what the simulation builds (the kernel backend, every run's algorithm with the
    overrides, the problem, the graphs on its workers) and raise ``argparse.ArgumentError``
    naming the flag behind the first that fails; the problem is returned for the run."""
    from gradpack.kernels.backend import resolve

    if args.latency and not args.bandwidth:
        raise flag_error("--latency", "the link model needs --bandwidth too")
    if args.out.exists() and not args.out.is_dir():
        raise flag_error("--out", f"{str(args.out)!r} exists and is not a folder")
    try:
        resolve(args.backend, "cpu")
    except ValueError as e:
        raise flag_error("--backend", one_line(e)) from None
    workers = args.workers if args.workers is not None else exp.workers
    if args.graph is not None:
        try:
            graphs.from_spec(args.graph, workers)
        except ValueError as e:
            raise flag_error("--graph", one_line(e)) from None
    flag = "--run" if args.run else "experiment"
    peers = []
    for run in runs:
        extra = {k: v for k, v in overrides.items() if k in _takes(run.algorithm)}
        sources = {**dict.fromkeys(run.hparams, flag), **{k: OVERRIDES[k] for k in extra}}

        def build(run=run, **hparams):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return from_spec(run.algorithm, run.compressor, backend=args.backend,
                                 **hparams)

        alg = checked_build(build, {**run.hparams, **extra}, sources, flag, what=run.label)
        if isinstance(alg, PeerAlgorithm):
            peers.append((run, alg, "graph" in extra))
    try:  # the slowest check (a preset's problem), last
        problem = exp.build(n=workers, seed=args.seed, dataset=args.dataset)
    except ValueError as e:
        raise flag_error("--workers", one_line(e)) from None
    for run, alg, graph_flag in peers:
        try:
            alg.graph_for(problem.n)
        except ValueError as e:
            flags = ["--graph"] if graph_flag else [flag, "--workers"]
            raise flag_error("/".join(flags), f"{run.label}: {one_line(e)}") from None
    return problem


def _takes(algorithm: str) -> list[str]:
    try:
        return hparam_names(algorithm)
    except ValueError:
        return []  # checked_build names --run


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    exp = EXPERIMENTS[args.experiment]
    runs = tuple(args.run) if args.run else exp.runs
    steps = args.steps if args.steps is not None else exp.steps
    overrides = {k: v for k, v in (("graph", args.graph), ("local_steps", args.local_steps))
                 if v is not None}
    torch.set_num_threads(args.threads)
    problem = check(args, exp, runs, overrides)  # bad flags fail here, before any work
    link = Link(args.bandwidth, args.latency) if args.bandwidth else None
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the table
        console = Console(width=200)
    console.print(f"[bold]{exp.title}[/]: {problem.name}, d = {problem.d}, n = {problem.n}, "
                  f"L = {problem.L:.4g}, {steps} steps")
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("simulating", total=steps * len(runs))
        results = run_experiment(exp, problem, runs, steps=steps, seed=args.seed,
                                 topology=args.topology, link=link, backend=args.backend,
                                 progress=lambda k: bar.advance(task), overrides=overrides)
    elapsed = time.perf_counter() - start

    target = args.target if args.target is not None else exp.target
    to_target = [_bits_to(h, target) for _, h in results] if target else []
    table = Table(title=f"{args.experiment}: final values after {steps} steps")
    for col in ("run", "lr", "loss", "||grad f||^2", "Mbit up/w", "Mbit down/w", "msgs/w",
                "consensus", "diverged at") + (("modelled s",) if link else ()) + (
                (f"Mbit/w to {target:g} f(x0)", "vs first") if target else ()):
        table.add_column(col, justify="left" if col == "run" else "right")
    for i, (r, h) in enumerate(results):
        row = [escape(r.label), f"{r.lr_scale:g}/L", _fmt(h.loss), _fmt(h.grad_norm_sq),
               f"{h.bits_per_worker('up')[-1] / 1e6:.4g}",
               f"{h.bits_per_worker('down')[-1] / 1e6:.4g}",
               f"{h.messages_up[-1].mean():.4g}", _fmt(h.consensus),
               "-" if h.diverged_at is None else str(h.diverged_at)]
        if link:
            row.append(f"{np.nanmax(h.time):.4g}")
        if target:
            bits, first = to_target[i], to_target[0]
            row += ["-" if bits is None else f"{bits / 1e6:.4g}",
                    "-" if bits is None or not first else f"{bits / first:.2%}"]
        table.add_row(*row)
    console.print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    dump = {"experiment": args.experiment, "problem": problem.name, "steps": steps,
            "runs": [_record(r, h) for r, h in results]}
    (args.out / f"{args.experiment}.json").write_text(json.dumps(dump))
    if not args.no_plot:
        path = _plot(args, exp.title, results, link is not None)
        console.print(f"plots: {path}")
    console.print(f"data: {args.out / f'{args.experiment}.json'}  ({elapsed:.1f} s)")
    return 0


def _bits_to(h, target: float) -> float | None:
    """Bits (up + down) per worker when the loss first reaches ``target * f(x0)``."""
    hit = np.flatnonzero(h.loss <= target * h.loss[0]) if h.loss is not None else []
    return float(h.bits_per_worker("total")[hit[0]]) if len(hit) else None


def _fmt(arr) -> str:
    if arr is None:
        return "-"
    finite = arr[np.isfinite(arr)]
    return f"{finite[-1]:.3e}" if finite.size else "nan"


def _record(r: Run, h) -> dict:
    def lst(a):
        return None if a is None else [None if not np.isfinite(v) else float(v) for v in a]
    return {"label": r.label, "algorithm": r.algorithm, "compressor": r.compressor,
            "hparams": r.hparams, "lr_scale": r.lr_scale, "diverged_at": h.diverged_at,
            "loss": lst(h.loss), "grad_norm_sq": lst(h.grad_norm_sq),
            "bits_up_per_worker": h.bits_per_worker("up").tolist(),
            "bits_down_per_worker": h.bits_per_worker("down").tolist(),
            "messages_up_per_worker": h.messages_up.mean(axis=1).tolist(),
            "consensus": lst(h.consensus), "time": lst(h.time)}


def _plot(args, title, results, with_time: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [("bits", f"{args.bits}link bits per worker"), ("steps", "step")]
    if with_time:
        xs.append(("time", "modelled time (s)"))
    ys = [("grad_norm_sq", r"$\|\nabla f(x)\|^2$"), ("loss", "loss")]
    fig, axes = plt.subplots(len(ys), len(xs), figsize=(5 * len(xs), 3.6 * len(ys)),
                             squeeze=False)
    for (r, h) in results:
        xvals = {"bits": h.bits_per_worker(args.bits), "steps": h.steps, "time": h.time}
        for i, (ykey, ylabel) in enumerate(ys):
            y = getattr(h, ykey)
            for j, (xkey, xlabel) in enumerate(xs):
                ax = axes[i][j]
                ax.semilogy(xvals[xkey], np.where(y > 0, y, np.nan), label=r.label)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = args.out / f"{args.experiment}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
