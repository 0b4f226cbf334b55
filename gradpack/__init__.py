"""gradpack: fused Triton kernels for communication-compressed data-parallel training.

The layers (DESIGN.md): ``gradpack.kernels`` (Triton kernels + torch twins),
``gradpack.compressors`` (``from_spec``), ``gradpack.comm``, ``gradpack.algorithms``,
``gradpack.ddp``; the applications: ``gradpack.sim`` (``gradpack.simulate``),
``gradpack.train``, ``gradpack.integrations`` (Lightning, Hugging Face, accelerate),
``gradpack.bench``; and ``gradpack.errors``.

``import gradpack`` imports none of them: each loads on first attribute access
(PEP 562), so ``import gradpack; gradpack.ddp.register(...)`` works and importing one layer
(``import gradpack.kernels.bitpack``) does not import the others. No side effects: no device
detection, no Triton import.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("kernels", "compressors", "comm", "algorithms", "ddp", "bench", "integrations",
               "errors", "sim", "train", "averaging")
_FUNCTIONS = {"simulate": "sim"}  # name -> the submodule that defines it

__all__ = ["__version__", *_SUBMODULES, *_FUNCTIONS]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
