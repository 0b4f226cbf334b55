"""Shared test fixtures.

Triton kernels run on CUDA when present, else on CPU under ``TRITON_INTERPRET=1``
(set by the README's test command before Python starts). Without either, the
Triton comparisons skip and say why.
"""

import pytest
import torch

from gradpack.kernels import interpreting, triton_available


def triton_device() -> str | None:
    if not triton_available():
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if interpreting() else None


@pytest.fixture
def tdevice():
    """Device on which Triton kernels can run, or skip."""
    device = triton_device()
    if device is None:
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1 (see README's test command)")
    return device
