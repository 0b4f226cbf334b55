"""Per-call integers never trigger a new JIT compile (issue 11, item 4; DESIGN: "per-call
integer arguments (seeds, offsets) are not JIT-specialized").

On a GPU, Triton compiles a kernel again for every new specialization of its integer arguments
(``== 1``, ``% 16 == 0``, other; i32 or i64). Seeds change every step and Top-K's ``prefix``,
``top``, ``lo``, ``need`` and Random-K's ``m`` change every call, so unless the kernel lists
them in ``do_not_specialize`` (and gives a seed one type: ``seed: tl.int64``) a compile can
start in the middle of training. ``specialization_probe.py`` records the compressors' launches
under the interpreter, then warms each kernel up with 50 values of each such argument on a
stand-in sm_90 driver and counts the compiles the JIT asks for.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradpack.kernels import triton_available

TESTS = Path(__file__).resolve().parent
PROBE = str(TESTS / "specialization_probe.py")
CONTROL = "specialization_probe:_control_kernel"

pytestmark = [
    pytest.mark.skipif(not triton_available(), reason="needs the triton package"),
    pytest.mark.slow,
]


def _run(*args, interpret: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GRADPACK_GRID_ORDER"}
    env["TRITON_INTERPRET"] = "1" if interpret else "0"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, PROBE, *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def compiles(tmp_path_factory):
    launches = tmp_path_factory.mktemp("specialization") / "launches.json"
    _run("record", str(launches), interpret=True)
    return json.loads(_run("count", str(launches), interpret=False))


def test_probe_sees_the_seeded_kernels_and_passes_a_correct_declaration(compiles):
    """The probe is not vacuous: the stochastic kernels take a seed on every call, and a kernel
    declared the recommended way compiles once for each per-call integer. (An integer that a
    kernel now reads from device memory, such as Top-K's plan, is no argument to probe.)"""
    from specialization_probe import PER_CALL

    seen = {arg for kernel, args in compiles.items() if kernel != CONTROL for arg in args}
    assert "seed" in seen and seen <= set(PER_CALL), seen
    assert {arg: v["compiles"] for arg, v in compiles[CONTROL].items()} == dict.fromkeys(
        PER_CALL, 1)


def test_per_call_integers_compile_once(compiles):
    """Each compressor kernel compiles exactly once over 50 seeds (and 50 values of each
    Top-K / Random-K per-call integer)."""
    bad = {
        kernel: {arg: f"{v['compiles']} compiles ({', '.join(v['classes'])})"
                 for arg, v in args.items() if v["compiles"] != 1}
        for kernel, args in compiles.items()
    }
    bad = {kernel: args for kernel, args in bad.items() if args}
    assert not bad, (
        "kernels recompile when a per-call integer changes; declare these arguments in "
        "do_not_specialize (and a seed as `seed: tl.int64`):\n"
        + "\n".join(f"  {kernel}: {args}" for kernel, args in sorted(bad.items())))
