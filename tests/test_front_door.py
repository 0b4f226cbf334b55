"""The front door: ``import gradpack`` is cheap, layers load on first use, one errors module.

Each check runs in a fresh interpreter (``sys.modules`` of this one is full of everything).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import gradpack
from gradpack import errors

LAYERS = ("kernels", "compressors", "comm", "algorithms", "ddp", "bench", "integrations",
          "sim", "train", "averaging")


def _modules_after(code: str) -> set[str]:
    """The module names loaded by ``code`` in a fresh interpreter."""
    probe = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=300, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_gradpack_imports_no_layer_and_no_heavy_dependency():
    loaded = _modules_after("import gradpack")
    assert not {f"gradpack.{name}" for name in LAYERS} & loaded
    assert not {"triton", "numba", "torch"} & loaded


def test_layers_are_attributes_and_load_on_first_use():
    loaded = _modules_after("""
        import gradpack
        assert callable(gradpack.ddp.register) and callable(gradpack.ddp.hook)
        assert gradpack.compressors.from_spec("topk:0.5").spec == "topk:0.5"
        assert callable(gradpack.simulate)
        from gradpack import simulate  # PEP 562 serves from-imports too
    """)
    assert {"gradpack.ddp", "gradpack.compressors"} <= loaded
    assert "gradpack.integrations" not in loaded  # nobody asked for it


def test_one_layer_does_not_import_the_layers_below_it():
    loaded = _modules_after("import gradpack.kernels.bitpack")
    above = {f"gradpack.{name}" for name in ("compressors", "comm", "algorithms", "ddp")}
    assert not above & loaded
    assert "gradpack.kernels.bitpack" in loaded


def test_dir_lists_the_layers_and_unknown_names_raise():
    assert {"ddp", "kernels", "simulate", "errors", "integrations"} <= set(dir(gradpack))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gradpack.nope  # noqa: B018


def test_errors_are_typed_with_the_builtin_bases_callers_catch():
    assert issubclass(errors.NonFiniteError, ValueError)
    assert issubclass(errors.CorruptPayloadError, ValueError)
    assert issubclass(errors.CheckpointError, ValueError)
    assert issubclass(errors.ConfigMismatchError, RuntimeError)
    assert issubclass(errors.PeerFailureError, RuntimeError)
    # the DDP hook's non-finite error is both the new NonFiniteError and, as in 0.1, a
    # FloatingPointError
    assert issubclass(errors.NonFiniteGradientError, errors.NonFiniteError)
    assert issubclass(errors.NonFiniteGradientError, FloatingPointError)
    # the names users import from gradpack.ddp are the same classes
    import gradpack.ddp as ddp
    for name in ("ConfigMismatchError", "NonFiniteGradientError", "PeerFailureError",
                 "HeaderMismatchError", "LayoutError"):
        assert getattr(ddp, name) is getattr(errors, name)
