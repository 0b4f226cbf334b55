"""Property-based checks (hypothesis) of the wire format: any fields round-trip through
the bit stream, and any finite input round-trips through every compressor's payload with
the sizes the spec promises and decode never fails on its own payloads."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradpack.compressors import from_spec
from gradpack.kernels import bitpack

SPECS = ["identity", "fp16", "bf16", "sign", "ssign", "qsgd:3:7", "qsgd:15", "topk:0.1",
         "topk:3", "topk:0.2:approx", "randk:0.25", "randk:2:biased", "qsgd:1:5:inf",
         "randk:0.5:qsgd:1:8:inf"]


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 32), data=st.data())
def test_fields_round_trip(width, data):
    fields = data.draw(st.lists(st.integers(0, 2**width - 1), min_size=1, max_size=300))
    f = torch.tensor(fields, dtype=torch.int64)
    payload = bitpack.pack(f, width, backend="torch")
    assert payload.numel() == 4 * math.ceil(len(fields) * width / 32)
    assert torch.equal(bitpack.unpack(payload, len(fields), width, backend="torch"), f)


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, deadline=None)
@given(spec=st.sampled_from(SPECS), values=st.lists(finite, min_size=1, max_size=200),
       seed=st.integers(0, 2**63 - 1))
def test_any_finite_input_round_trips(spec, values, seed):
    c = from_spec(spec, backend="torch")
    x = torch.tensor(values, dtype=torch.float32)
    d = x.numel()
    payload = c.encode(x, seed=seed)
    assert payload.dtype == torch.uint8 and payload.numel() == c.payload_bytes(d)
    y = c.decode(payload, d, seed=seed)
    assert y.shape == (d,) and torch.isfinite(y).all()
    if spec == "identity":
        assert torch.equal(y, x)
    if not c.unbiased and spec not in ("fp16", "bf16"):  # contractive: ||C(x) - x|| <= ||x||
        err, norm = (y.double() - x.double()).norm(), x.double().norm()
        assert err <= norm * (1 + 1e-6) + 1e-30
