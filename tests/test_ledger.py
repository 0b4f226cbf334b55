"""The bit ledger: algorithmic bits vs bytes handed to the collectives (DESIGN.md, "Ledger")."""

import io
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

from gradpack.algorithms import from_spec
from gradpack.comm import JsonLinesLog, Ledger, LedgerMismatch, LocalTransport, record_round
from gradpack.sim.core import simulate


def test_records_per_step_and_cumulative():
    led = Ledger(2)
    led.begin_step(0)
    led.message(0, "up", bits=70, nbytes=16)
    led.message(1, "up", bits=70, nbytes=16)
    led.collective("all_gather", 0, handed=16, received=16)
    led.collective("all_gather", 1, handed=16, received=16)
    led.begin_step(0)  # idempotent within a step (several buckets)
    led.begin_step(1)
    led.message(0, "down", bits=64, nbytes=8)
    led.collective("broadcast", 0, handed=8)
    led.message(1, "down", bits=64, nbytes=8)
    led.collective("broadcast", 1, handed=8, received=8)
    led.check()
    steps, h = led.history()
    assert steps == [0, 1]
    np.testing.assert_array_equal(h["bits_up"], [[70, 70], [0, 0]])
    np.testing.assert_array_equal(h["bytes_down"], [[0, 0], [8, 8]])
    tot = led.totals()
    np.testing.assert_array_equal(tot["bits_up"], [70, 70])
    np.testing.assert_array_equal(tot["handed_down"], [8, 8])
    np.testing.assert_array_equal(tot["received"], [16, 24])
    np.testing.assert_array_equal(tot["messages_up"], [1, 1])


def test_mismatch_is_caught_and_named():
    led = Ledger(2)
    led.begin_step(3)
    led.message(1, "up", bits=64, nbytes=8)
    led.collective("gather", 1, handed=16)
    with pytest.raises(LedgerMismatch, match=r"step 3, uplink: ranks \[1\]"):
        led.check()


@pytest.mark.parametrize("bits, nbytes", [(65, 8), (64, 16), (0, -1)])
def test_padding_rule(bits, nbytes):
    led = Ledger(1)
    led.begin_step(0)
    with pytest.raises(ValueError, match="padding"):
        led.message(0, "up", bits=bits, nbytes=nbytes)


def test_bad_records():
    led = Ledger(2)
    with pytest.raises(ValueError, match="begin_step"):
        led.message(0, "up", bits=8, nbytes=8)
    led.begin_step(5)
    with pytest.raises(ValueError, match="rank"):
        led.message(2, "up", bits=8, nbytes=8)
    with pytest.raises(ValueError, match="direction"):
        led.message(0, "sideways", bits=8, nbytes=8)
    with pytest.raises(ValueError, match="collective"):
        led.collective("all_reduce", 0, handed=8)
    with pytest.raises(ValueError, match="after step"):
        led.begin_step(4)


def test_state_dict_roundtrip():
    led = Ledger(2)
    led.begin_step(0)
    led.message(0, "up", bits=8, nbytes=8)
    other = Ledger(2)
    other.load_state_dict(pickle.loads(pickle.dumps(led.state_dict())))
    np.testing.assert_array_equal(other.totals()["bits_up"], [8, 0])
    with pytest.raises(ValueError, match="ranks"):
        Ledger(3).load_state_dict(led.state_dict())


def _saved(obj) -> tuple[int, object]:
    buf = io.BytesIO()
    torch.save(obj, buf)
    size = buf.tell()
    buf.seek(0)
    return size, torch.load(buf)  # the default: weights_only=True


def test_state_dict_is_tensors_and_plain_values_and_does_not_grow():
    led = Ledger(2)
    sizes = []
    for step in range(40):
        record_round(led, step, [0, 1], up=[(70, 16)])
        led.collective("all_gather", 0, handed=16)
        led.collective("all_gather", 1, handed=16)
        if step in (9, 39):
            size, sd = _saved(led.state_dict())
            sizes.append(size)
    assert sizes[0] == sizes[1]  # totals and the step in progress only
    other = Ledger(2)
    other.load_state_dict(sd)
    assert other.totals()["bits_up"].tolist() == [40 * 70, 40 * 70]
    assert other.current()["bytes_up"].tolist() == [16, 16] and other.step == 39
    other.check()
    record_round(other, 40, [0], up=[(8, 8)])
    assert other.totals()["bits_up"].tolist() == [40 * 70 + 8, 40 * 70]


def test_record_round_and_server_downlink():
    led = Ledger(3)
    record_round(led, 0, [1, 2], up=[(128, 16), (64, 8)], down=[(32, 4)], server_down_bits=96)
    tot = led.totals()
    assert tot["bits_up"].tolist() == [0, 192, 192]
    assert tot["messages_up"].tolist() == [0, 2, 2]
    assert tot["bits_down"].tolist() == [0, 32, 32]
    assert tot["bits_down_server"].tolist() == [0, 96, 96]
    assert tot["handed_down"].tolist() == [0, 0, 0]  # nothing travelled for the server count
    record_round(None, 0, [0], up=[(8, 8)])  # no ledger: nothing to do
    with pytest.raises(ValueError, match="non-negative"):
        led.server_downlink(0, -1)


def test_history_goes_to_the_run_log(tmp_path):
    path = tmp_path / "ledger.jsonl"
    led = Ledger(2, keep_history=False, log=JsonLinesLog(path))
    for step in range(3):
        record_round(led, step, [0, 1], up=[(8 * (step + 1), step + 1)])
    led.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["bits_up"] for r in rows] == [[8, 8], [16, 16], [24, 24]]
    with pytest.raises(ValueError, match="history was not kept"):
        led.history()


def test_old_field_layout_loads_and_bad_shapes_are_refused():
    led = Ledger(2)
    sd = led.state_dict()
    old = dict(sd, fields=list(sd["fields"][:9]), total=sd["total"][:9] + 5,
               current=sd["current"][:9])
    led.load_state_dict(old)
    assert led.totals()["bits_up"].tolist() == [5, 5]
    assert led.totals()["bits_down_server"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="shape"):
        led.load_state_dict(dict(sd, total=sd["total"][:3]))


SPECS = [("dcgd", "qsgd:7:64", {}), ("ef14", "sign", {}), ("ef21", "sign", {}),
         ("ef21-sgdm", "sign", {"eta": 0.3}), ("ef21-sgd2m", "sign", {"eta": 0.3}),
         ("dore", "qsgd:7:64", {})]


@pytest.mark.parametrize("topology", ["allgather", "server"])
@pytest.mark.parametrize("name, spec, hp", SPECS)
def test_simulated_ledger_is_exact(name, spec, hp, topology):
    """Per step and rank: the bytes handed to the collectives equal the payload bytes of the
    algorithm's messages, and the bits are the papers' count (EF21's g_i^0 at 32 bits/elem)."""
    n, d = 3, 37
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alg = from_spec(name, spec, backend="torch", **hp)
    gen = torch.Generator().manual_seed(0)
    targets = [torch.randn(d, generator=gen) for _ in range(n)]
    grad_fns = [lambda x, k, t=t: x.float() - t for t in targets]
    h = simulate(alg, grad_fns, torch.zeros(d), steps=4, lr=0.1, topology=topology)
    h.ledger.check()
    for k in range(4):
        up = np.diff(h.bits_up, axis=0)[k]
        assert (up == alg.uplink_bits(d, k)).all()
        assert (np.diff(h.bytes_up, axis=0)[k] == alg.payload_bytes(d, k)).all()
        down = np.diff(h.bits_down, axis=0)[k]
        assert (down == (alg.downlink_bits(d, k) if topology == "server" else 0)).all()
    if name.startswith("ef21"):
        assert alg.uplink_bits(d, 0) == 32 * d  # the uncompressed g_i^0 is counted
        assert alg.uplink_bits(d, 1) < 32 * d
    # what the transport records against what was handed: the exactness the check asserts
    tot = h.ledger.totals()
    np.testing.assert_array_equal(tot["handed_up"], h.bytes_up[-1])
    np.testing.assert_array_equal(tot["handed_down"], h.bytes_down[-1])
    assert ((8 * h.bytes_up[-1] - h.bits_up[-1]) < 64 * 4).all()


def test_transport_without_ledger_records_nothing():
    t = LocalTransport(2)
    out = t.all_gather(torch.zeros(2, 8, dtype=torch.uint8))
    assert out.shape == (2, 8) and t.ledger is None
