"""What every native CPU kernel (``*_cpu.py``, numba) shares: the JIT options, the thread
count, and zero-copy views of torch tensors as numpy arrays.

Threads: each call runs on ``torch.get_num_threads()`` threads, so a DDP worker or a
torchrun rank that limited torch's threads is not oversubscribed.

Compiled code is cached on disk (numba ``cache=True``), so only a machine's first call of
a specialization pays for compiling it. numba keys a cached kernel by its own module's
source only, not by the helpers it inlines from other modules; so that an edited or
upgraded helper can never leave a stale kernel behind, the cache lives in a directory
named by a hash of every native kernel module's source (:func:`cache_dir`, under
``$XDG_CACHE_HOME`` or ``~/.cache``), unless ``NUMBA_CACHE_DIR`` says otherwise. Importing
a native kernel module sets numba's cache directory for the process (numba reads it when a
kernel is defined).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

#: options of every native kernel: no fast-math (the twins round every operation the
#: same way), numpy's error model (no exception checks in the loops)
JIT = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")


def cache_dir() -> Path:
    """Where the native kernels' compiled code is cached: one directory per version of
    their sources."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*_cpu.py")) + [Path(__file__)]:
        digest.update(path.name.encode() + path.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gradpack" / "numba" / digest.hexdigest()[:16]


def _use_cache_dir() -> None:
    import numba

    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # not writable: numba's own default (next to the module, or its cache)
        return
    numba.config.CACHE_DIR = str(path)


if importlib.util.find_spec("numba") is not None:
    _use_cache_dir()

#: below this many elements of work a call runs on one thread (a parallel region's start
#: costs more than it saves)
PARALLEL_MIN = 1 << 17


def threads(work: int) -> None:
    """:func:`set_threads`, then one thread when ``work`` is below :data:`PARALLEL_MIN`."""
    import numba

    set_threads()
    if work < PARALLEL_MIN:
        numba.set_num_threads(1)


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


_POOL: dict[str, object] = {"pool": None, "size": 0, "pid": 0}
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's worker threads (re-created after a fork, grown on demand)."""
    with _POOL_LOCK:
        if _POOL["pid"] != os.getpid() or _POOL["size"] < workers:
            if _POOL["pool"] is not None and _POOL["pid"] == os.getpid():
                _POOL["pool"].shutdown(wait=False)  # type: ignore[attr-defined]
            _POOL.update(pool=ThreadPoolExecutor(workers, thread_name_prefix="gradpack-cpu"),
                         size=workers, pid=os.getpid())
        return _POOL["pool"]  # type: ignore[return-value]


def run_blocks(kernel, nblocks: int, grain: int, *args) -> None:
    """``kernel(b0, b1, *args)`` over ``[0, nblocks)`` cut into one contiguous range per
    thread (at most ``torch.get_num_threads()``, each at least ``grain`` blocks)."""
    n = max(1, min(torch.get_num_threads(), nblocks // max(1, grain)))
    if n == 1:
        kernel(0, nblocks, *args)
        return
    bounds = [nblocks * i // n for i in range(n + 1)]
    pool = _pool(n - 1)
    futures = [pool.submit(kernel, bounds[i], bounds[i + 1], *args) for i in range(1, n)]
    kernel(bounds[0], bounds[1], *args)
    for f in futures:
        f.result()
