"""Experiment problems for ``gradpack simulate`` and the reproduction tests.

Each builder returns a :class:`Problem`: ``n`` workers' gradient functions
``grad_fns[i](x, step)``, the loss ``f(x) = (1/n) sum_i f_i(x)``, its true gradient, ``x0``
and a smoothness constant ``L`` (for step sizes ``lr = c / L``). Stochastic gradients are
pure functions of ``(x, step)``: worker ``i``'s sample at step ``k`` comes from a
``torch.Generator`` keyed by ``(seed, i, k)``, so the simulator and the distributed path see
the same samples. Everything is computed in float64.

- :func:`top1`: seed 004's divergence example (n = d = 3, Top-1);
- :func:`quadratic`: heterogeneous strongly convex least squares, plus optional Gaussian
  gradient noise ``sigma`` (seed 003's stochastic setting, seed 002's strongly convex one);
- :func:`logreg`: seed 003's softmax regression with the non-convex regulariser
  ``lambda * sum [x]_k^2 / (1 + [x]_k^2)`` (lambda = 0.1), on a scikit-learn dataset
  (``breast_cancer``, ``digits``) split by label across workers (heterogeneous), or on
  ``synthetic`` heterogeneous data; minibatches of ``batch`` samples (``None``: full).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

F64 = torch.float64


@dataclass
class Problem:
    name: str
    grad_fns: list[Callable[[torch.Tensor, int], torch.Tensor]]
    loss_fn: Callable[[torch.Tensor], float]
    grad_fn: Callable[[torch.Tensor], torch.Tensor]
    x0: torch.Tensor
    L: float
    x_star: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.grad_fns)

    @property
    def d(self) -> int:
        return self.x0.numel()


def _generator(seed: int, worker: int, step: int) -> torch.Generator:
    key = (seed * 1_000_003 + worker) * 1_000_033 + step
    return torch.Generator().manual_seed(key % (2**63 - 1))


# -- seed 004: the Top-1 example ---------------------------------------------------------------
TOP1_A = ((-3.0, 2.0, 2.0), (2.0, -3.0, 2.0), (2.0, 2.0, -3.0))


def top1() -> Problem:
    """``f_i(x) = <a_i, x>^2 + 1/4 ||x||^2`` with seed 004's ``a_i``, ``x0 = (1, 1, 1)``;
    ``x* = 0``. ``grad f_i(x) = 2 <a_i, x> a_i + x / 2``."""
    a = torch.tensor(TOP1_A, dtype=F64)

    def grad_i(i):
        return lambda x, step=0: 2.0 * (a[i] @ x.to(F64)) * a[i] + 0.5 * x.to(F64)

    def loss(x):
        x = x.to(F64)
        return float(((a @ x) ** 2).mean() + 0.25 * (x @ x))

    def grad(x):
        x = x.to(F64)
        return 2.0 * a.T @ (a @ x) / 3 + 0.5 * x

    hess = 2.0 * a.T @ a / 3 + 0.5 * torch.eye(3, dtype=F64)
    return Problem("top1", [grad_i(i) for i in range(3)], loss, grad,
                   torch.ones(3, dtype=F64), float(torch.linalg.eigvalsh(hess)[-1]),
                   torch.zeros(3, dtype=F64))


# -- least squares ----------------------------------------------------------------------------
def quadratic(n: int = 10, d: int = 50, *, m: int = 20, mu: float = 0.1, sigma: float = 0.0,
              heterogeneity: float = 1.0, seed: int = 0) -> Problem:
    """``f_i(x) = 1/(2m) ||B_i x - y_i||^2 + mu/2 ||x||^2`` (strongly convex), ``B_i`` with
    N(0, 1/d) entries; ``y_i = B_i (x_true + heterogeneity * z_i)``. The loss reported is
    ``f(x) - f(x*)``. Stochastic gradients add
    ``sigma * N(0, I)`` (so ``E||g_i - grad f_i||^2 = sigma^2 d``)."""
    g = torch.Generator().manual_seed(seed)
    x_true = torch.randn(d, generator=g, dtype=F64)
    B = [torch.randn(m, d, generator=g, dtype=F64) / d**0.5 for _ in range(n)]
    y = [Bi @ (x_true + heterogeneity * torch.randn(d, generator=g, dtype=F64)) for Bi in B]
    H = [Bi.T @ Bi / m + mu * torch.eye(d, dtype=F64) for Bi in B]
    c = [Bi.T @ yi / m for Bi, yi in zip(B, y, strict=True)]
    H_mean, c_mean = sum(H) / n, sum(c) / n
    x_star = torch.linalg.solve(H_mean, c_mean)

    def f(x):
        res = sum(float(((Bi @ x - yi) ** 2).sum()) for Bi, yi in zip(B, y, strict=True))
        return res / (2 * m * n) + 0.5 * mu * float(x @ x)

    f_star = f(x_star)

    def grad_i(i):
        def fn(x, step=0):
            gi = H[i] @ x.to(F64) - c[i]
            if sigma > 0:
                gi = gi + sigma * torch.randn(d, generator=_generator(seed, i, step), dtype=F64)
            return gi
        return fn

    return Problem(
        f"quadratic(n={n}, d={d}, sigma={sigma})", [grad_i(i) for i in range(n)],
        lambda x: f(x.to(F64)) - f_star,
        lambda x: H_mean @ x.to(F64) - c_mean, torch.zeros(d, dtype=F64),
        max(float(torch.linalg.eigvalsh(Hi)[-1]) for Hi in H), x_star,
    )


# -- seed 003's logistic regression -----------------------------------------------------------
def _dataset(name: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Features (standardised, with a bias column), labels, and each worker's sample indices."""
    if name == "synthetic":
        rng = np.random.default_rng(seed)
        c, l_feat, per = 4, 20, 100
        w_true = rng.normal(size=(c, l_feat))
        feats, labels, parts = [], [], []
        for i in range(n):
            shift = rng.normal(scale=2.0, size=l_feat)  # each worker's own feature distribution
            a = rng.normal(size=(per, l_feat)) + shift
            logits = a @ w_true.T + rng.gumbel(size=(per, c))
            feats.append(a)
            labels.append(logits.argmax(1))
            parts.append(np.arange(i * per, (i + 1) * per))
        a, y = np.concatenate(feats), np.concatenate(labels)
    elif name in ("breast_cancer", "digits"):
        from sklearn import datasets

        data = getattr(datasets, f"load_{name}")()
        a, y = data.data.astype(np.float64), data.target.astype(np.int64)
        order = np.argsort(y, kind="stable")  # split by label: heterogeneous workers
        parts = np.array_split(order, n)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected breast_cancer, digits or synthetic")
    std = a.std(0)
    a = (a - a.mean(0)) / np.where(std > 0, std, 1.0)
    a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    return a, y, parts


def logreg(dataset: str = "breast_cancer", n: int = 10, *, lam: float = 0.1,
           batch: int | None = None, seed: int = 0) -> Problem:
    """Seed 003's experiment: ``f_i(x) = -(1/m) sum_j log softmax(X a_ij)[y_ij]
    + lam * sum_{y,k} [x_y]_k^2 / (1 + [x_y]_k^2)``, ``x = (x_1..x_c)`` flattened [c * l]."""
    a_np, y_np, parts = _dataset(dataset, seed, n)
    c, l_feat = int(y_np.max()) + 1, a_np.shape[1]
    # torch-allocated copies: tensors indexed out of a numpy-backed one can hit a slow
    # (misaligned) matmul path, 300x slower at these sizes
    a_i = [torch.tensor(a_np[p]) for p in parts]
    y_i = [torch.tensor(y_np[p]) for p in parts]
    if any(len(p) == 0 for p in parts):
        raise ValueError(f"{dataset}: too few samples for {n} workers")

    def loss_grad(x, feats, labels):
        X = x.to(F64).view(c, l_feat)
        logits = feats @ X.T
        logp = torch.log_softmax(logits, dim=1)
        m = feats.shape[0]
        ce = -logp[torch.arange(m), labels].mean()
        p = logp.exp()
        p[torch.arange(m), labels] -= 1.0
        grad = (p.T @ feats) / m
        sq = X * X
        reg = lam * (sq / (1 + sq)).sum()
        grad = grad + lam * 2 * X / (1 + sq) ** 2
        return float(ce + reg), grad.reshape(-1)

    def grad_i(i):
        def fn(x, step=0):
            feats, labels = a_i[i], y_i[i]
            if batch is not None:
                idx = torch.randint(feats.shape[0], (batch,), generator=_generator(seed, i, step))
                feats, labels = feats[idx], labels[idx]
            return loss_grad(x, feats, labels)[1]
        return fn

    # f = (1/n) sum_i mean_j CE_ij + reg: one pass over all samples, weight 1/(n m_i) each
    a_all, y_all = torch.cat(a_i), torch.cat(y_i)
    w_all = torch.cat([torch.full((len(p),), 1.0 / (n * len(p)), dtype=F64) for p in parts])

    def full(x):
        X = x.to(F64).view(c, l_feat)
        logp = torch.log_softmax(a_all @ X.T, dim=1)
        m = a_all.shape[0]
        ce = -(logp[torch.arange(m), y_all] * w_all).sum()
        p = logp.exp()
        p[torch.arange(m), y_all] -= 1.0
        sq = X * X
        grad = (p * w_all[:, None]).T @ a_all + lam * 2 * X / (1 + sq) ** 2
        return float(ce + lam * (sq / (1 + sq)).sum()), grad.reshape(-1)

    def loss(x):
        return full(x)[0]

    def grad(x):
        return full(x)[1]

    # softmax cross-entropy: Hessian <= lambda_max(A^T A / m) (I - 11^T/c) <= that; reg: 2 lam
    L = max(float(torch.linalg.eigvalsh(ai.T @ ai / ai.shape[0])[-1]) for ai in a_i) + 2 * lam
    name = f"logreg({dataset}, n={n}, batch={batch})"
    return Problem(name, [grad_i(i) for i in range(n)], loss, grad,
                   torch.zeros(c * l_feat, dtype=F64), L)
