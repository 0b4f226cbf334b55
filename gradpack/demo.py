"""``gradpack demo``: compress a real gradient with every compressor and print a table
of wire bits, payload bytes, compression ratio and relative error."""

from __future__ import annotations

import argparse

import torch

DEFAULT_SPECS = ["identity", "fp16", "bf16", "qsgd:15", "qsgd:3", "sign", "ssign",
                 "topk:0.01", "topk:0.01:approx", "randk:0.01", "randk:0.01:biased"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--specs", nargs="*", default=None, help="compressor specs (default: all)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--seed", type=int, default=0)


def real_gradient(seed: int = 0) -> torch.Tensor:
    """The gradient of a small MLP's cross-entropy on scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(64, 256, generator=g) / 8).requires_grad_()
    w2 = (torch.randn(256, 10, generator=g) / 16).requires_grad_()
    loss = torch.nn.functional.cross_entropy(torch.relu(x @ w1) @ w2, y)
    loss.backward()
    return torch.cat([w1.grad.reshape(-1), w2.grad.reshape(-1)])


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from gradpack.compressors import from_spec, names

    grad = real_gradient(args.seed)
    d = grad.numel()
    specs = args.specs or [s for s in DEFAULT_SPECS if s.split(":")[0] in names()]
    table = Table(title=f"gradpack compressors on a real gradient (MLP on digits, d = {d:,})")
    columns = ("spec", "wire bits", "payload bytes", "ratio vs fp32", "||C(x)-x|| / ||x||")
    for col in columns:
        table.add_column(col, justify="right" if col != "spec" else "left")
    for spec in specs:
        c = from_spec(spec, backend=args.backend)
        payload = c.encode(grad, seed=args.seed)
        y = c.decode(payload, d, seed=args.seed)
        err = float((y - grad).norm() / grad.norm())
        bits = c.wire_bits(d)
        table.add_row(spec, f"{bits:,}", f"{payload.numel():,}", f"{32 * d / bits:.1f}x",
                      f"{err:.4f}")
    Console().print(table)
    return 0
