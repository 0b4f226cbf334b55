"""gradpack.kernels: Triton kernels and their torch reference twins.

Each op lives in its own module: ``<op>.py`` holds the torch twin and the dispatcher,
``<op>_triton.py`` the Triton kernel and launcher with the same signature (imported
only when the Triton backend is used).
"""

from .backend import BACKENDS, interpreting, resolve, triton_available

__all__ = ["BACKENDS", "interpreting", "resolve", "triton_available"]
