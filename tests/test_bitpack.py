"""Bit packing: round trips at awkward sizes and widths, Triton equals the torch twin,
and the documented bit order against numpy.packbits."""

import numpy as np
import pytest
import torch

from gradpack.kernels import bitpack

SIZES = [1, 7, 8, 9, 31, 32, 33, 511, 4097]
WIDTHS = [1, 2, 3, 5, 7, 8, 13, 16, 24, 31, 32]


def _fields(n, width, seed=0):
    g = torch.Generator().manual_seed(seed + n * 37 + width)
    hi = 2**width
    return torch.randint(0, hi, (n,), generator=g, dtype=torch.int64)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("n", SIZES)
def test_round_trip_torch(n, width):
    f = _fields(n, width)
    payload = bitpack.pack(f, width, backend="torch")
    assert payload.numel() == 4 * ((n * width + 31) // 32)
    assert torch.equal(bitpack.unpack(payload, n, width, backend="torch"), f)


@pytest.mark.parametrize("width", [1, 3, 8, 13, 32])
@pytest.mark.parametrize("n", [1, 9, 4097])
def test_bit_order_matches_numpy(n, width):
    """Stream bit b of field i is bit (i*w + b) % 8 of byte (i*w + b) // 8."""
    f = _fields(n, width, seed=1)
    bits = ((f.numpy()[:, None] >> np.arange(width)) & 1).astype(np.uint8).reshape(-1)
    ref = np.packbits(bits, bitorder="little")
    payload = bitpack.pack(f, width, backend="torch").numpy()
    assert np.array_equal(payload[: ref.size], ref)
    assert not payload[ref.size :].any()


@pytest.mark.triton
@pytest.mark.parametrize("width", [1, 2, 5, 9, 16, 23, 32])
@pytest.mark.parametrize("n", [1, 7, 33, 1025, 4097])
def test_triton_matches_torch(tdevice, n, width):
    f = _fields(n, width, seed=2).to(tdevice)
    want = bitpack.pack(f.cpu(), width, backend="torch")
    got = bitpack.pack(f, width, backend="triton")
    assert torch.equal(got.cpu(), want)
    assert torch.equal(bitpack.unpack(got, n, width, backend="triton").cpu(), f.cpu())


def test_all_ones_and_zeros():
    for width in (1, 7, 32):
        ones = torch.full((100,), 2**width - 1)
        assert torch.equal(bitpack.unpack(bitpack.pack(ones, width), 100, width), ones)
        zeros = torch.zeros(100, dtype=torch.int64)
        assert not bitpack.pack(zeros, width).any()


@pytest.mark.parametrize("width", [0, 33, 2.0])
def test_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        bitpack.pack(torch.zeros(3, dtype=torch.int64), width)


def test_bad_payload_length():
    p = bitpack.pack(torch.arange(10), 4)
    with pytest.raises(ValueError, match="bytes"):
        bitpack.unpack(p[:-4], 10, 4)
    with pytest.raises(ValueError, match="integer"):
        bitpack.pack(torch.zeros(3), 4)
