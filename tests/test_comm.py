"""Transports: shapes, checks, async handles, ledger records; the modelled link.

The torch.distributed transport over gloo is exercised in test_distributed_equivalence.py.
"""

import pytest
import torch

from gradpack.comm import Ledger, Link, LocalTransport, ProcessGroupTransport


def _payloads(n, p):
    return torch.arange(n * p, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, p)


def test_local_all_gather_is_the_stack():
    led = Ledger(3)
    led.begin_step(0)
    t = LocalTransport(3, ledger=led)
    x = _payloads(3, 16)
    assert torch.equal(t.all_gather(x), x)
    tot = led.totals()
    assert tot["handed_up"].tolist() == [16, 16, 16]
    assert tot["received"].tolist() == [32, 32, 32]


def test_local_async_and_future():
    t = LocalTransport(2)
    x = _payloads(2, 8)
    pending = t.all_gather(x, async_op=True)
    assert pending.is_completed()
    assert torch.equal(pending.wait(), x)
    assert torch.equal(pending.get_future().wait(), x)


def test_local_server_topology():
    led = Ledger(3)
    led.begin_step(0)
    t = LocalTransport(3, ledger=led)
    x = _payloads(3, 8)
    assert torch.equal(t.gather(x, dst=1), x)
    down = _payloads(1, 24)[0]
    assert torch.equal(t.broadcast(down, src=1, nbytes=24), down)
    tot = led.totals()
    assert tot["handed_up"].tolist() == [8, 8, 8]
    assert tot["handed_down"].tolist() == [24, 24, 24]
    assert tot["received"].tolist() == [24, 16 + 0, 24]


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 8, dtype=torch.uint8), r"expected \[3, P\]"),
    (torch.zeros(3, 8, dtype=torch.int32), "uint8"),
    (torch.zeros(3, 0, dtype=torch.uint8), "empty"),
])
def test_local_rejects_bad_payloads(bad, match):
    with pytest.raises(ValueError, match=match):
        LocalTransport(3).all_gather(bad)


def test_broadcast_checks_size_and_roots():
    t = LocalTransport(2)
    with pytest.raises(ValueError, match="8 bytes"):
        t.broadcast(torch.zeros(9, dtype=torch.uint8), src=0, nbytes=8)
    with pytest.raises(ValueError, match="root rank"):
        t.gather(_payloads(2, 8), dst=2)


def test_ledger_world_size_must_match():
    with pytest.raises(ValueError, match="ledger is for 2"):
        LocalTransport(3, ledger=Ledger(2))


def test_process_group_transport_needs_init():
    with pytest.raises(ValueError, match="init_process_group"):
        ProcessGroupTransport()


def test_link_model():
    link = Link(bandwidth=1e9, latency=1e-3)
    assert link.round_time("server", 4, 1000, 500) == pytest.approx(2e-3 + 8 * 1500 / 1e9)
    assert link.round_time("allgather", 4, 1000) == pytest.approx(3 * (1e-3 + 8e3 / 1e9))
    with pytest.raises(ValueError, match="bandwidth"):
        Link(bandwidth=0)
    with pytest.raises(ValueError, match="topology"):
        link.round_time("ring", 2, 1)
