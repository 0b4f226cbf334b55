"""Run the Triton interpreter's grid programs in another order than ``0, 1, 2, ...``.

A GPU runs a grid's programs concurrently, in no promised order; the CPU interpreter runs
them one after another in row-major order, so a kernel whose program ``i`` reads what
program ``i - 1`` wrote passes every interpreter test and is wrong on a GPU. With the order
``reversed`` or ``shuffled:SEED`` the interpreter executes the programs in that order instead
(each exactly once), so such a kernel gives a different result and its twin test fails.

The interpreter's grid loop (``GridExecutor.__call__`` in ``triton/runtime/interpreter.py``)
calls ``interpreter_builder.set_grid_dim(nx, ny, nz)`` once per launch and then
``interpreter_builder.set_grid_idx(x, y, z)`` before each program, in row-major order; the
patch maps the n-th program of that loop to the n-th entry of a permutation of the grid.

Enable it for a whole test session with ``GRADPACK_GRID_ORDER=reversed`` or
``GRADPACK_GRID_ORDER=shuffled:SEED`` (read by ``tests/conftest.py``), or for a block with
``with grid_order("reversed"): ...``. Needs ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib
import random

ENV = "GRADPACK_GRID_ORDER"


class GridOrder:
    """An execution order of a launch's programs, and counts of what it did."""

    def __init__(self, spec: str) -> None:
        name, _, arg = spec.partition(":")
        if name not in ("natural", "reversed", "shuffled") or (arg and name != "shuffled"):
            raise ValueError(f"grid order must be natural, reversed or shuffled:SEED, got {spec!r}")
        try:
            self.seed = int(arg) if name == "shuffled" else None
        except ValueError:
            raise ValueError(f"grid order {spec!r}: SEED must be an integer") from None
        if name == "shuffled" and not arg:
            raise ValueError(f"grid order {spec!r}: shuffled needs a seed, shuffled:SEED")
        self.spec = spec
        self.name = name
        self.launches = 0  # launches run under this order
        self.reordered = 0  # launches whose programs ran in an order other than the natural one

    def permutation(self, n: int) -> list[int]:
        """Linear program ids in the order to run them (a fresh shuffle per launch)."""
        order = list(range(n))
        if self.name == "reversed":
            order.reverse()
        elif self.name == "shuffled":
            random.Random(f"{self.seed}:{self.launches}").shuffle(order)
        self.launches += 1
        if order != sorted(order):
            self.reordered += 1
        return order


def install(spec: str):
    """Run every following interpreter launch in order ``spec``; returns ``(order, restore)``."""
    from triton.runtime.interpreter import interpreter_builder as builder

    order = GridOrder(spec)
    saved = {k: builder.__dict__[k] for k in ("set_grid_dim", "set_grid_idx") if k in
             builder.__dict__}
    # the interpreter's own methods: an inner order replaces an outer one, never composes
    set_dim = type(builder).set_grid_dim.__get__(builder)
    set_idx = type(builder).set_grid_idx.__get__(builder)
    perm: list[int] = []

    def set_grid_dim(nx, ny, nz):
        set_dim(nx, ny, nz)
        perm[:] = order.permutation(nx * ny * nz)

    def set_grid_idx(x, y, z):
        _, ny, nz = builder.grid_dim
        linear = perm[(x * ny + y) * nz + z]
        x, rest = divmod(linear, ny * nz)
        y, z = divmod(rest, nz)
        set_idx(x, y, z)

    builder.set_grid_dim = set_grid_dim
    builder.set_grid_idx = set_grid_idx

    def restore() -> None:
        for k in ("set_grid_dim", "set_grid_idx"):
            if k in saved:
                setattr(builder, k, saved[k])
            else:
                delattr(builder, k)

    return order, restore


@contextlib.contextmanager
def grid_order(spec: str):
    """``with grid_order("reversed") as order:`` (interpreter only)."""
    order, restore = install(spec)
    try:
        yield order
    finally:
        restore()


class Plugin:
    """pytest plugin: the session's order, shown in the header and the summary."""

    def __init__(self, spec: str) -> None:
        self.order, self.restore = install(spec)

    def pytest_report_header(self, config):
        return f"triton grid order: {self.order.spec}"

    def pytest_terminal_summary(self, terminalreporter):
        o = self.order
        terminalreporter.write_line(
            f"triton grid order {o.spec}: {o.launches} launches, {o.reordered} reordered")

    def pytest_unconfigure(self, config):
        self.restore()
