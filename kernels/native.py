"""What every native CPU kernel (``*_cpu.py``, numba) shares: the JIT options, the thread
count, and zero-copy views of torch tensors as numpy arrays.

Threads: each call runs on ``torch.get_num_threads()`` threads, so a DDP worker or a
torchrun rank that limited torch's threads is not oversubscribed. Compiled code is cached
on disk (numba ``cache=True``: next to the module when that is writable, else in numba's
user-wide cache, or ``NUMBA_CACHE_DIR``), so only a process's first call of a
specialization pays for compiling it, and only on a machine that never compiled it.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

#: options of every native kernel: no fast-math (the twins round every operation the
#: same way), numpy's error model (no exception checks in the loops)
JIT = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")


def available() -> bool:
    """numba is importable (the native backend can run)."""
    return importlib.util.find_spec("numba") is not None


def set_threads() -> None:
    """Run the next native call on ``torch.get_num_threads()`` threads."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16}


def array(t: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view of the CPU tensor ``t``; fp16 and bf16 as their int16 bits
    (native kernels convert them in integer arithmetic)."""
    if t.dtype in _VIEW:
        t = t.view(_VIEW[t.dtype])
    return t.detach().numpy()
