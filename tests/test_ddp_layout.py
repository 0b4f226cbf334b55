"""Compression units: fixed when the state binds, served by any bucket layout (no processes)."""

from __future__ import annotations

import pytest
import torch

from gradpack.ddp.layout import LayoutError, UnitTable

NUMELS = [6, 2, 5, 3, 4]  # parameter i has NUMELS[i] elements


def init_state(numel, device):
    return {"numel": numel, "world_size": 2, "rank": 0,
            "h": torch.zeros(numel), "g": torch.zeros(numel)}


CAPS = [4 * 9, 4 * 7]  # bytes: DDP's first bucket cap, then every later one's


def bound() -> UnitTable:
    """Units of DDP's first iteration: one bucket of every parameter, forward order."""
    table = UnitTable(init_state)
    table.bind([0, 1, 2, 3, 4], [torch.zeros(n) for n in NUMELS], "cpu", CAPS)
    return table


def collect(table, arrived, params):
    return table.collect(arrived, params, [NUMELS[p] for p in params],
                         torch.zeros(sum(NUMELS[p] for p in params)))


def test_units_are_ddps_rebuilt_buckets_for_reverse_ready_order():
    """Reverse order (4, 3, 2, 1, 0) with DDP's assignment: a bucket closes once it holds at
    least its cap: 16 + 12 + 20 >= 36 bytes, then 8 + 24 >= 28."""
    table = bound()
    assert [u.params for u in table.units] == [(4, 3, 2), (1, 0)]
    assert [u.state["numel"] for u in table.units] == [12, 8]
    assert table.units[0].stream != table.units[1].stream
    table.bind([0, 1, 2, 3, 4], [torch.zeros(n) for n in NUMELS], "cpu", CAPS)
    assert len(table.units) == 2  # bound once


def test_the_initial_bucket_holds_every_unit_whole():
    table = bound()
    arrived = {}
    pieces = collect(table, arrived, [0, 1, 2, 3, 4])
    assert not arrived and [pc.unit.params for pc in pieces] == [(1, 0), (4, 3, 2)]
    by_params = {pc.unit.params: pc for pc in pieces}
    # (4, 3, 2) lies at offsets 16 (param 4), 13 (param 3), 8 (param 2): three runs
    assert [(a, n) for _, a, n in by_params[(4, 3, 2)].runs] == [(16, 4), (13, 3), (8, 5)]
    assert [(a, n) for _, a, n in by_params[(1, 0)].runs] == [(6, 2), (0, 6)]


def test_units_wait_for_their_parameters_across_buckets():
    """Another rebuilt layout: a unit is complete in the bucket bringing its last parameter,
    and its runs point into every bucket that holds a part."""
    table = bound()
    arrived = {}
    assert collect(table, arrived, [4, 2]) == []
    (big,) = collect(table, arrived, [3, 1])
    assert big.unit.params == (4, 3, 2) and len(big.runs) == 3
    (small,) = collect(table, arrived, [0])
    assert small.unit.params == (1, 0) and not arrived
    (b, a1, n1), (c, a0, n0) = small.runs
    assert (a1, n1, a0, n0) == (3, 2, 0, 6) and b is big.runs[1][0]
    b[3:5], c[:] = torch.tensor([1.0, 2.0]), torch.arange(3.0, 9.0)
    assert torch.equal(small.grad(), torch.arange(1.0, 9.0))
    small.scatter(-torch.arange(8.0))
    assert torch.equal(b[3:5], -torch.arange(2.0)) and torch.equal(c, -torch.arange(2.0, 8.0))


def test_a_parameter_without_a_unit_is_an_error():
    table = bound()
    with pytest.raises(LayoutError, match="position 7"):
        table.collect({}, [7], [3], torch.zeros(3))


def test_register_needs_a_ddp_model_and_config_differences_are_named():
    import torch.nn as nn

    import gradpack.ddp
    from gradpack.algorithms import from_spec
    from gradpack.comm.distributed import describe_difference

    with pytest.raises(TypeError, match="DistributedDataParallel"):
        gradpack.ddp.register(nn.Linear(2, 2), from_spec("ef21", "topk:0.5"))
    text = describe_difference([{"seed": 0, "compressor": "sign"},
                                {"seed": 1, "compressor": "sign"}])
    assert "seed: rank 0: 0, rank 1: 1" in text and "compressor" not in text
