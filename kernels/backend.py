"""Backend selection: which implementation of a kernel runs for a given tensor.

``"torch"`` is the reference and the fast CPU path; ``"triton"`` runs the Triton
kernels (CUDA tensors, or CPU tensors when the process was started with
``TRITON_INTERPRET=1``); ``"auto"`` picks Triton for CUDA tensors and torch for CPU
tensors. Nothing here runs at import time.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton kernels execute in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    return backend


def resolve(backend: str, device: torch.device | str) -> str:
    """Return ``"torch"`` or ``"triton"`` for tensors on ``device``.

    Raises ``ValueError`` when Triton is asked for where it cannot run.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' requested but the triton package is not installed")
        if device.type == "cpu" and not interpreting():
            raise ValueError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 in the environment "
                "before triton is imported (the Triton CPU interpreter); use backend='torch' "
                "for the fast CPU path"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' does not support device {device}")
    return backend
