"""Helpers for the multi-process DDP tests: gloo workers on 127.0.0.1, results via files.

Workers initialise with ``env://`` (MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE), exactly as
under ``torchrun``. Each worker returns a picklable value, saved to ``out_dir/rank{r}.pt``;
an exception is saved as its message and type name instead, so tests can assert on the
errors every rank raised.

The framework integration tests share the rest: the tiny model, the data, the algorithm,
and the environment a ``torchrun``-launched worker sees (frameworks detect it and use the
process group already initialised here, instead of launching processes themselves).
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import socket
import sys
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gradpack.algorithms import from_spec
from gradpack.comm.distributed import exit_worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world_size, port, out_dir, timeout_s, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = {"ok": True, "value": fn(rank, world_size, *args)}
    except BaseException as e:  # noqa: BLE001 - reported to the test
        result = {"ok": False, "type": type(e).__name__, "error": str(e),
                  "trace": traceback.format_exc()}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    # leave without tearing the process group down (a peer may be dead on purpose) and
    # without interpreter finalization, where gloo's threads can abort the process
    exit_worker()


def run_workers(fn, world_size: int, out_dir, *args, timeout_s: float = 30.0) -> list[dict]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; return each
    rank's ``{"ok", "value"}`` or ``{"ok": False, "type", "error", "trace"}`` (``None``
    for a rank that wrote nothing, e.g. one that killed itself)."""
    out_dir = str(out_dir)
    mp.start_processes(_entry, args=(fn, world_size, free_port(), out_dir, timeout_s, args),
                       nprocs=world_size, join=True, start_method="spawn")
    results = []
    for r in range(world_size):
        path = os.path.join(out_dir, f"rank{r}.pt")
        results.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
    return results


def values(results: list[dict]) -> list:
    """The ranks' values, failing with every rank's traceback if one raised."""
    bad = [f"rank {r}:\n{res['trace']}" for r, res in enumerate(results)
           if res is None or not res["ok"]] if all(res is not None for res in results) else \
        [f"rank {r} wrote nothing" for r, res in enumerate(results) if res is None]
    if bad:
        raise AssertionError("\n".join(bad))
    return [res["value"] for res in results]


# -- framework integration tests ------------------------------------------------------
FEATURES = 8
BUCKET_CAP_MB = 300 / 2**20  # several DDP buckets even for this tiny model


def require(module: str):
    """Skip, saying why, when a framework is not installed (the dev extra installs it)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]' installs it)")


def hide_repo_root() -> None:
    """Drop the repository root from ``sys.path``: its top-level ``kernels/`` folder (which
    installs as ``gradpack.kernels``) would shadow the ``kernels`` package that transformers
    imports. gradpack itself is imported from its installation."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    if "kernels" in sys.modules and not hasattr(sys.modules["kernels"], "__version__"):
        del sys.modules["kernels"]


def torchrun_env(rank: int, world_size: int) -> None:
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), GROUP_RANK="0",
                      ROLE_RANK=str(rank), TORCHELASTIC_RUN_ID="gradpack-test",
                      RANK=str(rank), WORLD_SIZE=str(world_size))


def algorithm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_spec("ef21-sgdm", "topk:0.1", eta=0.5, seed=3)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 1))


def dataset(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, FEATURES, generator=g)
    y = x[:, :4].sum(1, keepdim=True) - x[:, 4:].sum(1, keepdim=True)
    return x, y


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
