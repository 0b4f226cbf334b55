"""Compression units follow their parameters across DDP's bucket rebuild (no processes)."""

from __future__ import annotations

import pytest
import torch

from gradpack.ddp.layout import LayoutError, UnitTable

NUMELS = [6, 2, 5, 3, 4]  # parameter i has NUMELS[i] elements


def init_state(numel, device):
    return {"numel": numel, "world_size": 2, "rank": 0,
            "h": torch.zeros(numel), "g": torch.zeros(numel)}


def tag(table: UnitTable) -> None:
    """Write into every state element a value naming its parameter and position."""
    for u in table.units:
        pos = 0
        for p, n in zip(u.params, u.numels, strict=True):
            u.state["h"][pos:pos + n] = 100 * p + torch.arange(n)
            u.state["g"][pos:pos + n] = -(100 * p + torch.arange(n))
            pos += n


def expect(table: UnitTable) -> None:
    for u in table.units:
        assert u.state["numel"] == u.numel == sum(u.numels)
        pos = 0
        for p, n in zip(u.params, u.numels, strict=True):
            assert torch.equal(u.state["h"][pos:pos + n], 100 * p + torch.arange(n).float())
            assert torch.equal(u.state["g"][pos:pos + n], -(100 * p + torch.arange(n).float()))
            pos += n


def plan(table, params):
    return table.plan(params, [NUMELS[p] for p in params], "cpu")


def test_first_bucket_gets_fresh_state_then_rebuild_moves_it_per_parameter():
    table = UnitTable(init_state)
    pieces = plan(table, [0, 1, 2, 3, 4])  # DDP's initial single bucket, forward order
    assert len(pieces) == 1 and pieces[0].contiguous and table.units[0].numel == 20
    tag(table)
    # DDP's rebuild: ready order, reversed, two buckets
    (a,) = plan(table, [4, 3, 2])
    assert a.unit.params == (4, 3, 2)
    assert sorted(u.params for u in table.units) == [(0, 1), (4, 3, 2)]  # the rest kept
    (b,) = plan(table, [1, 0])
    assert b.unit.params == (1, 0)
    assert sorted(u.params for u in table.units) == [(1, 0), (4, 3, 2)]
    expect(table)
    assert table.units[0].stream != table.units[1].stream
    # the next iterations are the fast path: same unit objects, no copy
    (again,) = plan(table, [4, 3, 2])
    assert again.unit is a.unit and again.contiguous


def test_bucket_of_whole_units_runs_each_unit_on_its_slices():
    """The first iteration after loading a checkpoint: DDP's single bucket holds the saved
    units, in another order; nothing is remapped."""
    table = UnitTable(init_state)
    plan(table, [0, 1, 2, 3, 4])
    plan(table, [4, 3, 2])
    plan(table, [1, 0])
    tag(table)
    rebuilds = table.rebuilds
    pieces = plan(table, [0, 1, 2, 3, 4])
    assert table.rebuilds == rebuilds
    by_params = {pc.unit.params: pc for pc in pieces}
    # (1, 0) lies at offsets 6 (param 1) and 0 (param 0): two runs in unit order
    assert by_params[(1, 0)].runs == [(6, 2), (0, 6)]
    assert by_params[(4, 3, 2)].runs == [(16, 4), (13, 3), (8, 5)]
    expect(table)


def test_merge_with_disagreeing_scalar_state_is_an_error():
    table = UnitTable(init_state)
    plan(table, [0, 1])
    plan(table, [2, 3, 4])
    table.units[0].state["rank"] = 1
    with pytest.raises(LayoutError, match="'rank'"):
        plan(table, [1, 2])


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
