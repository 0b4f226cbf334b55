"""The bit ledger: algorithmic bits vs bytes handed to the collectives (DESIGN.md, "Ledger")."""

import pickle
import warnings

import numpy as np
import pytest
import torch

from gradpack.algorithms import from_spec
from gradpack.comm import Ledger, LedgerMismatch, LocalTransport
from gradpack.simulator import simulate


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
