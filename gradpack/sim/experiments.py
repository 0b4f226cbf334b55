"""Paper-style experiment presets for ``gradpack simulate``: a problem, the runs to compare
(algorithm, compressor, hyperparameters, step size as a multiple of ``1/L``), steps and
topology. Every run is a :func:`gradpack.sim.simulate` call."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from gradpack.algorithms import CompressorWarning, PeerAlgorithm, from_spec, hparam_names
from gradpack.cli_types import number_or_text
from gradpack.comm import Link
from gradpack.sim.core import History, simulate
from gradpack.sim.problems import Problem, logreg, quadratic, top1


@dataclass(frozen=True)
class Run:
    algorithm: str
    compressor: str
    hparams: dict = field(default_factory=dict)
    lr_scale: float = 1.0  # lr = lr_scale / L

    @property
    def label(self) -> str:
        hp = "".join(f",{k}={_fmt(v)}" for k, v in self.hparams.items())
        return f"{self.algorithm}[{self.compressor}{hp}]"

    @classmethod
    def parse(cls, text: str) -> Run:
        """``ALG/COMPRESSOR[/key=value...]``, e.g. ``ef21-sgdm/topk:0.1/eta=0.1/lr=0.5`` or
        ``dsgd/identity/graph=one-peer-exp`` (``lr`` is the step size in units of ``1/L``;
        values are ints, floats or, failing both, strings)."""
        parts = text.split("/")
        if len(parts) < 2:
            raise ValueError(f"run {text!r}: expected ALG/COMPRESSOR[/key=value...]")
        hparams, lr_scale = {}, 1.0
        for kv in parts[2:]:
            key, sep, value = kv.partition("=")
            if not sep:
                raise ValueError(f"run {text!r}: {kv!r} is not key=value")
            if key == "lr":
                lr_scale = float(value)
            else:
                hparams[key] = number_or_text(value)
        return cls(parts[0], parts[1], hparams, lr_scale)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Experiment:
    title: str
    build: Callable[..., Problem]
    runs: tuple[Run, ...]
    steps: int
    topology: str = "allgather"
    x0_shift: float = 0.0  # start away from the origin
    target: float | None = None  # table: bits each run needs to reach loss <= target * f(x0)
    workers: int = 10  # default n (--workers overrides)
    doc: str = ""  # what the preset shows (README)


EXPERIMENTS: dict[str, Experiment] = {
    # seed 004: DCGD with Top-1 diverges geometrically, error feedback converges
    "top1": Experiment(
        "Seed 004's Top-1 example (n = d = 3)", lambda n, seed, **kw: top1(),
        (Run("dcgd", "topk:1", lr_scale=0.5), Run("ef14", "topk:1", lr_scale=0.5),
         Run("ef21", "topk:1", lr_scale=0.5), Run("dcgd", "identity", lr_scale=0.5)),
        steps=300),
    # seed 003: stochastic gradients, Top-1: EF21-SGD stalls, EF21-SGDM ~ SGD
    "quadratic": Experiment(
        "Noisy heterogeneous least squares, Top-1 (seed 003's message)",
        lambda n, seed, **kw: quadratic(n=n, d=20, mu=0.5, sigma=0.3, seed=seed),
        (Run("dcgd", "identity", lr_scale=0.07), Run("ef21", "topk:1", lr_scale=0.07),
         Run("ef21-sgdm", "topk:1", {"eta": 0.1}, lr_scale=0.07),
         Run("ef21-sgd2m", "topk:1", {"eta": 0.2}, lr_scale=0.07)),
        steps=500, x0_shift=3.0),
    # seed 003's experiment: softmax regression with the non-convex regulariser, batch 1
    "logreg": Experiment(
        "Seed 003 logistic regression, lambda = 0.1, batch size 1",
        lambda n, seed, dataset="breast_cancer", **kw: logreg(dataset, n, batch=1, seed=seed),
        (Run("dcgd", "identity", lr_scale=0.5), Run("ef14", "topk:0.05", lr_scale=0.5),
         Run("ef21", "topk:0.05", lr_scale=0.5),
         Run("ef21-sgdm", "topk:0.05", {"eta": 0.1}, lr_scale=0.5),
         Run("ef21-sgd2m", "topk:0.05", {"eta": 0.1}, lr_scale=0.5)),
        steps=1000),
    # seed 002: DORE, both directions compressed, strongly convex least squares; its
    # operators: random sparsification composed with p-norm (p = inf) ternary quantization
    # (tests/test_reproductions.py: > 95% fewer bits than GD for the same loss)
    "dore": Experiment(
        "DORE on strongly convex least squares (server topology, seed 002)",
        lambda n, seed, **kw: quadratic(n=n, d=1024, mu=0.002, sigma=0.0, seed=seed),
        (Run("dcgd", "identity"), Run("dcgd", "randk:0.5:qsgd:1:512:inf"),
         Run("dore", "qsgd:1:512:inf", {"alpha": 0.3, "beta": 1.0, "eta": 0.3}),
         Run("dore", "randk:0.5:qsgd:1:512:inf", {"alpha": 0.2, "beta": 1.0, "eta": 0.2})),
        steps=300, topology="server", x0_shift=1.0, target=1e-6),
    # seed 000: local SGD needs fewer rounds than parallel SGD (shared minimiser: IID quadratic)
    "local-sgd": Experiment(
        "Local SGD vs parallel SGD, least squares with a shared minimiser (seed 000)",
        lambda n, seed, **kw: quadratic(n=n, d=10, m=12, mu=0.0, heterogeneity=0.0, seed=seed),
        (Run("local-sgd", "identity", {"local_steps": 1}, lr_scale=0.5),
         Run("local-sgd", "identity", {"local_steps": 8}, lr_scale=0.5),
         Run("local-sgd", "topk:0.3", {"local_steps": 8}, lr_scale=0.5)),
        steps=480, x0_shift=1.0, target=1e-6, workers=4,
        doc="bits to the target are proportional to communication rounds"),
    # seed 000: under heterogeneity local SGD stalls at a floor that SCAFFOLD removes
    "scaffold": Experiment(
        "Local SGD vs SCAFFOLD, K = 8, heterogeneous least squares (seed 000)",
        lambda n, seed, **kw: quadratic(n=n, d=10, m=12, mu=0.0, heterogeneity=1.0, seed=seed),
        (Run("local-sgd", "identity", {"local_steps": 8}, lr_scale=0.5),
         Run("scaffold", "identity", {"local_steps": 8}, lr_scale=0.5),
         Run("scaffold", "topk:0.3", {"local_steps": 8}, lr_scale=0.5)),
        steps=480, x0_shift=1.0, target=1e-6, workers=4),
    # seed 001: topologies (rho), one-peer exp ~ static exp with one message, tracking
    "gossip": Experiment(
        "DSGD over ring / static exp / one-peer exp, and gradient tracking (seed 001)",
        lambda n, seed, **kw: quadratic(n=n, d=10, m=12, mu=0.0, sigma=0.1, heterogeneity=0.5,
                                        seed=seed),
        (Run("dsgd", "identity", {"graph": "ring"}, lr_scale=0.3),
         Run("dsgd", "identity", {"graph": "exp"}, lr_scale=0.3),
         Run("dsgd", "identity", {"graph": "one-peer-exp"}, lr_scale=0.3),
         Run("gradient-tracking", "identity", {"graph": "one-peer-exp"}, lr_scale=0.3)),
        steps=200, x0_shift=1.0, workers=16),
    # seed 001 + Koloskova et al. 2019: compressed gossip, far fewer bits for the same loss
    "choco": Experiment(
        "CHOCO-SGD vs DSGD on a ring, least squares with a shared minimiser",
        lambda n, seed, **kw: quadratic(n=n, d=40, m=48, mu=0.0, heterogeneity=0.0, seed=seed),
        (Run("dsgd", "identity", {"graph": "ring"}, lr_scale=0.3),
         Run("choco-sgd", "topk:0.1", {"graph": "ring", "gamma": 0.3}, lr_scale=0.3),
         Run("choco-sgd", "sign", {"graph": "ring", "gamma": 0.3}, lr_scale=0.3)),
        steps=250, x0_shift=1.0, target=1e-6, workers=6),
}


def run_experiment(
    exp: Experiment,
    problem: Problem,
    runs: tuple[Run, ...],
    *,
    steps: int,
    seed: int = 0,
    topology: str | None = None,
    link: Link | None = None,
    backend: str = "auto",
    progress: Callable[[int], None] | None = None,
    overrides: dict | None = None,
) -> list[tuple[Run, History]]:
    """Simulate every run on ``problem``; compressor-class warnings are expected here (DCGD
    with Top-1 is the point of seed 004) and silenced. ``overrides`` (e.g. ``graph``,
    ``local_steps`` from the command line) replace those hyperparameters in the runs whose
    algorithm takes them."""
    x0 = problem.x0 + exp.x0_shift
    results = []
    for run in runs:
        accepted = hparam_names(run.algorithm)
        extra = {k: v for k, v in (overrides or {}).items() if k in accepted}
        if extra:
            run = Run(run.algorithm, run.compressor, {**run.hparams, **extra}, run.lr_scale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompressorWarning)
            alg = from_spec(run.algorithm, run.compressor, backend=backend, **run.hparams)
        topo = "allgather" if isinstance(alg, PeerAlgorithm) else topology or exp.topology
        hist = simulate(alg, problem.grad_fns, x0, steps=steps, lr=run.lr_scale / problem.L,
                        seed=seed, loss_fn=problem.loss_fn, grad_fn=problem.grad_fn,
                        topology=topo, link=link, progress=progress)
        hist.ledger.check()
        results.append((run, hist))
    return results
