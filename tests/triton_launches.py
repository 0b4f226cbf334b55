"""Record every Triton kernel launch a test session makes under ``TRITON_INTERPRET=1``, as the
set of distinct specializations a GPU's JIT would compile (``tests/gpu_compile.py`` compiles
them for real GPU targets).

Triton keys its compile cache on the kernel, one entry per argument and the launch options:
a tensor by its dtype and whether ``data_ptr() % 16 == 0``; an int by its type (i32, i64, u64)
and its value class (``== 1`` becomes a constexpr, divisible by 16, other) unless the kernel
lists it in ``do_not_specialize``; a float or bool by its type; ``None`` as a constexpr;
constexprs by value; options (``num_warps``, ``enable_fp_fusion``, ...) by value. The recorder
computes that key with Triton's own binder, built from the kernel's Python function and its
``@triton.jit`` options, so it is exactly the key the JIT would use, and keeps one
representative launch per key (scalar values, tensor dtypes and alignment) plus a count.

Kernels are identified by their Triton function objects (``module:qualname`` of the jitted
function and its source file), not by module names known in advance.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
from pathlib import Path

FORMAT = 1
ENV_PATH = "GRADPACK_TRITON_LAUNCHES"  # write the session's launches here at session end

_listeners: list[Recorder] = []
_binders: dict[int, tuple[object, object]] = {}  # id(kernel) -> (kernel, binder)
_installed: list = []  # the original InterpretedFunction.run, while patched


def kernel_name(kernel) -> str:
    fn = kernel.fn
    return f"{fn.__module__}:{fn.__qualname__}"


def _binder(kernel):
    """Triton's own argument binder for ``kernel``: returns ``(params, specialization, options)``
    exactly as ``JITFunction.run`` computes them."""
    hit = _binders.get(id(kernel))
    if hit is not None and hit[0] is kernel:
        return hit[1]
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    if not isinstance(kernel, JITFunction):  # the interpreter's InterpretedFunction
        opts = getattr(kernel, "kwargs", {})
        keep = ("do_not_specialize", "do_not_specialize_on_alignment")
        kernel_jf = JITFunction(kernel.fn, **{k: opts[k] for k in keep if opts.get(k)})
    else:
        kernel_jf = kernel
    binder = create_function_from_signature(kernel_jf.signature, kernel_jf.params, BaseBackend)
    _binders[id(kernel)] = (kernel, binder)
    return binder


def jsonable(value):
    """A constexpr or scalar as JSON; ``tl.dtype`` as ``{"tl_dtype": name}``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value).__name__ == "constexpr":
        return jsonable(value.value)
    if isinstance(value, tuple):
        return {"tuple": [jsonable(v) for v in value]}
    if type(value).__module__.startswith("triton") and type(value).__name__ == "dtype":
        return {"tl_dtype": value.name}
    raise TypeError(f"cannot record a constexpr of type {type(value).__name__}: {value!r}")


def describe(value, spec: tuple) -> dict:
    """One argument: its kind, what Triton specialized (``spec``) and a representative value."""
    ty, attr = spec[0], spec[1] if len(spec) > 1 else None
    if ty == "constexpr":
        return {"kind": "constexpr", "value": jsonable(value)}
    if hasattr(value, "data_ptr"):
        dtype = value.dtype
        name = str(dtype).removeprefix("torch.") if "torch" in str(type(dtype)) else dtype.name
        return {"kind": "tensor", "type": ty, "attr": attr, "dtype": name}
    if isinstance(value, bool):
        return {"kind": "bool", "type": ty, "value": value}
    if isinstance(value, int):
        return {"kind": "int", "type": ty, "attr": attr, "value": value}
    if isinstance(value, float):
        return {"kind": "float", "type": ty, "value": value}
    raise TypeError(f"cannot record an argument of type {type(value).__name__}")


def specialize(kernel, args, kwargs) -> tuple[str, dict]:
    """``(key, record)`` of one launch: the JIT's cache key and a replayable description."""
    params, specialization, options = _binder(kernel)(*args, **kwargs)
    described = {
        name: describe(value, spec)
        for (name, value), spec in zip(params.items(), specialization, strict=True)
    }
    options = {k: jsonable(v) for k, v in sorted(options.items())}
    name = kernel_name(kernel)
    key = json.dumps([name, [list(s) for s in specialization], options], default=repr)
    record = {
        "kernel": name,
        "file": str(Path(inspect.getfile(kernel.fn)).resolve()),
        "params": described,
        "options": options,
    }
    return key, record


class Recorder:
    """The distinct specializations launched while this recorder listens."""

    def __init__(self) -> None:
        self.specs: dict[str, dict] = {}
        self.errors: list[str] = []
        self.test: str | None = None  # the test now running (set by the pytest plugin)

    def record(self, kernel, args, kwargs) -> None:
        try:
            key, record = specialize(kernel, args, kwargs)
        except Exception as e:  # never break the test that launched the kernel
            self.errors.append(f"{kernel_name(kernel)}: {type(e).__name__}: {e}")
            return
        hit = self.specs.get(key)
        if hit is None:
            self.specs[key] = hit = {**record, "launches": 0, "first_test": self.test}
        hit["launches"] += 1

    def records(self) -> list[dict]:
        return [self.specs[k] for k in sorted(self.specs)]

    def kernels(self) -> set[str]:
        return {r["kernel"] for r in self.specs.values()}

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "specializations": self.records(), "errors": self.errors}
        path.write_text(json.dumps(doc, indent=1))
        return path


def record_key(record: dict) -> str:
    """The JIT key of a recorded specialization (to merge recordings): representative int
    and float values left out, constexpr values kept."""
    params = [[name, *(p.get(f) for f in ("kind", "type", "attr", "dtype")),
               p.get("value") if p["kind"] == "constexpr" else None]
              for name, p in record["params"].items()]
    return json.dumps([record["kernel"], params, record["options"]], default=repr)


def load(path: str | Path) -> dict:
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a launches file of format {FORMAT}")
    return doc


_LAUNCH_LOCK = threading.RLock()


def install() -> None:
    """Patch the interpreter's launch entry point to report to every listening recorder."""
    if _installed:
        return
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            for recorder in list(_listeners):
                recorder.record(self, args, kwargs)
        # the interpreter keeps its grid state in globals: one launch at a time (DDP runs
        # comm-hook callbacks on another thread; on a GPU the launches are just queued)
        with _LAUNCH_LOCK:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    _installed.append(original)


def uninstall() -> None:
    if _installed:
        from triton.runtime.interpreter import InterpretedFunction

        InterpretedFunction.run = _installed.pop()


def listen(recorder: Recorder) -> None:
    install()
    _listeners.append(recorder)


@contextlib.contextmanager
def capture(exclusive: bool = False):
    """``with capture() as rec:`` records the launches made inside the block (interpreter only);
    ``exclusive``: only there, not in the session's recorder (a test's own throwaway kernels)."""
    recorder = Recorder()
    install()
    others = _listeners[:] if exclusive else []
    _listeners[:] = [recorder] if exclusive else [*_listeners, recorder]
    try:
        yield recorder
    finally:
        _listeners[:] = others if exclusive else [r for r in _listeners if r is not recorder]


class Plugin:
    """pytest plugin: one session recorder, the running test's id on each record, and the
    JSON file written at session end when a path is configured."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.recorder = Recorder()
        listen(self.recorder)

    def pytest_runtest_setup(self, item):
        self.recorder.test = item.nodeid

    def pytest_runtest_teardown(self, item):
        self.recorder.test = None

    def pytest_sessionfinish(self, session):
        if self.path:
            self.recorder.dump(self.path)

    def pytest_terminal_summary(self, terminalreporter):
        rec = self.recorder
        line = (f"triton launches: {len(rec.specs)} specializations of {len(rec.kernels())} "
                f"kernels recorded")
        if self.path:
            line += f", written to {self.path}"
        if rec.errors:
            line += f"; {len(rec.errors)} launches could not be recorded: {rec.errors[:3]}"
        terminalreporter.write_line(line)


PLUGIN_NAME = "gradpack-triton-launches"


def session_recorder(config) -> Recorder | None:
    """The session's recorder, or None when the session does not run the interpreter."""
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    return plugin.recorder if plugin is not None else None
