"""Shared test fixtures and the session's Triton plugins.

Triton kernels run on CUDA when present, else on CPU under ``TRITON_INTERPRET=1``
(set by the README's test command before Python starts). Without either, the
Triton comparisons skip and say why.

Under the interpreter the session also records every Triton launch as the specializations a
GPU would compile (``triton_launches.py``; ``--triton-launches PATH`` or
``GRADPACK_TRITON_LAUNCHES=PATH`` writes them to a JSON file), and
``GRADPACK_GRID_ORDER=reversed|shuffled:SEED`` runs every grid's programs in that order
(``grid_order.py``). Tests marked ``gpu_compile`` run last, after everything they check.
"""

import os

import grid_order
import pytest
import torch
import triton_launches

from gradpack.kernels import interpreting, triton_available
from tests.backends import kernel_backend  # noqa: F401  (the per-backend fixture)


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


def pytest_addoption(parser):
    parser.addoption(
        "--triton-launches", default=os.environ.get(triton_launches.ENV_PATH), metavar="PATH",
        help="write the Triton specializations this session launched (interpreter) to PATH")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu_compile: compiles recorded Triton launches for GPU targets (runs last)")
    interpreted = triton_available() and interpreting()
    if interpreted:
        plugin = triton_launches.Plugin(config.getoption("--triton-launches"))
        config.pluginmanager.register(plugin, triton_launches.PLUGIN_NAME)
    order = os.environ.get(grid_order.ENV)
    if order:
        if not interpreted:
            raise pytest.UsageError(f"{grid_order.ENV}={order} needs TRITON_INTERPRET=1")
        config.pluginmanager.register(grid_order.Plugin(order), "gradpack-grid-order")


def pytest_collection_modifyitems(config, items):
    last = [item for item in items if item.get_closest_marker("gpu_compile")]
    if last:
        items[:] = [item for item in items if not item.get_closest_marker("gpu_compile")] + last
