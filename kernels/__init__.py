"""gradpack.kernels: the compression kernels, each with three interchangeable backends.

Each op has one spec module that every backend imports (what the bytes mean, the codes
kernels branch on, the plan math) and one dispatch table backend -> implementation:

==============  ======================================  ===================================
op              spec and dispatcher                      implementations
==============  ======================================  ===================================
random bits     ``philox``                               ``philox_torch/_triton/_cpu``
tree sums       ``treesum``                              ``treesum_torch/_triton/_cpu``
bit packing     ``bitpack``                              ``bitpack_torch/_triton/_cpu``
fusion          ``fusion``                               ``fusion_torch/_triton/_cpu``
elementwise     ``format`` (codes), ``elementwise``      ``elementwise_torch/_triton/_cpu``
sparse          ``sparse``                               ``sparse_torch/_triton/_cpu``
Top-K           ``topk``                                 ``topk_torch/_triton/_cpu``
Random-K        ``randk``                                ``randk_torch/_triton/_cpu``
==============  ======================================  ===================================

``*_torch`` is the readable reference (and runs on any device), ``*_triton`` the Triton
kernels (CUDA, ROCm, or the CPU interpreter under ``TRITON_INTERPRET=1``), ``*_cpu`` the
native CPU kernels (numba). No backend module imports another backend's module; tests
prove every backend equal to the torch twin bit for bit.
"""

from .backend import BACKENDS, interpreting, native_available, resolve, triton_available

__all__ = ["BACKENDS", "interpreting", "native_available", "resolve", "triton_available"]
