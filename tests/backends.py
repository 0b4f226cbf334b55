"""The backends every kernel test compares with the torch twin: Triton (on CUDA, or on CPU
under ``TRITON_INTERPRET=1``) and the native CPU kernels (numba). Use the fixture
``kernel_backend`` (imported into a test module) to run a test once per backend; each
case skips, saying why, where its backend cannot run."""

from __future__ import annotations

import pytest
import torch

from gradpack.kernels import interpreting, native_available, triton_available

#: the backends that run on CPU tensors without the Triton interpreter
CPU_BACKENDS = ["torch", "cpu"] if native_available() else ["torch"]


def device_for(backend: str) -> str | None:
    """The device ``backend`` runs on here, or ``None``."""
    if backend == "cpu":
        return "cpu" if native_available() else None
    if not triton_available():
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if interpreting() else None


@pytest.fixture(params=[pytest.param("triton", marks=pytest.mark.triton), "cpu"])
def kernel_backend(request) -> tuple[str, str]:
    """``(backend, device)``: a backend other than the torch twin, and where it runs."""
    device = device_for(request.param)
    if device is None:
        pytest.skip(f"backend {request.param!r} cannot run here (Triton needs CUDA or "
                    "TRITON_INTERPRET=1; the native backend needs numba)")
    return request.param, device
