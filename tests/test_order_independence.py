"""Triton kernels give the same bits whatever order the grid's programs run in (issue 11,
item 2): the Triton twin tests (every test marked ``triton``) pass with the interpreter running
each grid in reversed and in shuffled order (``grid_order.py``), and a kernel whose programs
depend on each other's order is caught.

The twin tests compare against the torch twins bit for bit, so passing them in another order
means bit-identical results in that order. What this cannot show: races between programs that
a GPU runs at the same time (the interpreter still runs one program at a time), and the order
of floating-point atomics within a program.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton_launches
from grid_order import grid_order

from gradpack.kernels import interpreting, triton_available

TESTS = Path(__file__).resolve().parent
ORDERS = ("reversed", "shuffled:20261203")

pytestmark = pytest.mark.skipif(
    not (triton_available() and interpreting()),
    reason="reorders the programs of Triton's interpreter (TRITON_INTERPRET=1)")

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _ticket_kernel(counter_ptr, out_ptr):
        """out[program] = the order in which the program ran (a 2-D grid)."""
        program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(out_ptr + program, tl.atomic_add(counter_ptr, 1))

    @triton.jit
    def _chain_kernel(x_ptr, BLOCK: tl.constexpr):
        """Deliberately wrong: block i = block i-1 + 1, reading what program i-1 stored."""
        pid = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        here = pid * BLOCK + offs
        prev = tl.load(x_ptr + here - BLOCK, mask=here >= BLOCK, other=0.0)
        tl.store(x_ptr + here, prev + 1.0)


def _tickets(order: str) -> list[int]:
    counter = torch.zeros(1, dtype=torch.int32)
    out = torch.full((12,), -1, dtype=torch.int32)
    with triton_launches.capture(exclusive=True), grid_order(order):
        _ticket_kernel[(4, 3)](counter, out)
    return out.tolist()


def test_orders_run_every_program_once_in_that_order():
    assert _tickets("natural") == list(range(12))
    assert _tickets("reversed") == list(range(11, -1, -1))
    shuffled = _tickets("shuffled:1")
    assert sorted(shuffled) == list(range(12)) and shuffled != list(range(12))
    assert _tickets("shuffled:1") == shuffled  # a seed gives one order


def test_a_kernel_that_depends_on_program_order_is_caught():
    def chain(order: str) -> torch.Tensor:
        x = torch.zeros(8, 4)
        with triton_launches.capture(exclusive=True), grid_order(order):
            _chain_kernel[(8,)](x, BLOCK=4)
        return x[:, 0]

    assert torch.equal(chain("natural"), torch.arange(1.0, 9.0))  # passes in the interpreter
    for order in ORDERS:
        assert not torch.equal(chain(order), torch.arange(1.0, 9.0)), order


@pytest.mark.slow
def test_triton_twin_tests_pass_in_reversed_and_shuffled_grid_order():
    """Both orders run at once (one process each, the two CPU cores)."""
    env = {k: v for k, v in os.environ.items() if k != triton_launches.ENV_PATH}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "triton",
           str(TESTS)]
    runs = {order: subprocess.Popen(cmd, env={**env, "GRADPACK_GRID_ORDER": order},
                                    cwd=TESTS.parent, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            for order in ORDERS}
    failed = []
    for order, proc in runs.items():
        output = proc.communicate(timeout=900)[0]
        summary = [line for line in output.splitlines() if line.startswith("triton grid order")]
        reordered = int(summary[0].split(", ")[1].split()[0]) if summary else 0
        if proc.returncode != 0 or reordered == 0:
            failed.append(f"--- {order}: exit {proc.returncode}, {summary}\n{output[-8000:]}")
    assert not failed, "\n".join(failed)
