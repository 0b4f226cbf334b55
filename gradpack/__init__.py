"""gradpack: fused Triton kernels for communication-compressed data-parallel training.

The layers (DESIGN.md): ``gradpack.kernels`` (Triton kernels + torch twins),
``gradpack.compressors`` (``from_spec``), ``gradpack.comm``, ``gradpack.algorithms``,
``gradpack.ddp``. Importing gradpack has no side effects: no device detection, no
Triton import.
"""

__version__ = "0.1.0"

from . import algorithms, comm, compressors  # noqa: E402
from .simulator import simulate  # noqa: E402

__all__ = ["__version__", "algorithms", "comm", "compressors", "simulate"]
