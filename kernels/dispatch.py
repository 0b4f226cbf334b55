"""One dispatch table per op: backend name -> the module implementing it.

Each op's spec module (``elementwise``, ``topk``, ...) holds a :class:`Table` naming its
implementations (``<op>_torch``, ``<op>_triton``, ``<op>_cpu``); a module is imported on
first use, so importing an op never imports Triton or numba, and no backend module imports
another's (the pattern of bitsandbytes' ``register_kernel``).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class Table:
    def __init__(self, op: str, **modules: str):
        self.op = op
        self.modules = modules

    def __call__(self, backend: str) -> ModuleType:
        """The module implementing this op on ``backend`` (one of :data:`.backend.BACKENDS`
        other than ``"auto"``, already resolved)."""
        path = self.modules.get(backend)
        if path is None:
            raise ValueError(f"{self.op}: no {backend!r} implementation; "
                             f"available: {sorted(self.modules)}")
        return importlib.import_module(path, package=__package__)
