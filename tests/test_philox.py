"""The Philox twins (torch, native CPU) equal Triton's ``tl.randint4x`` / ``tl.rand`` and the
element stream bit for bit, match the Random123 known-answer vector, and look uniform."""

import numpy as np
import pytest
import torch

from gradpack.kernels import philox, philox_torch


@pytest.mark.triton
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 + 7, 2**63 - 1])
def test_torch_twin_equals_triton(tdevice, seed):
    from gradpack.kernels.philox_triton import draw

    n = 3000
    got = draw(seed, n, tdevice).cpu()
    offs = torch.arange(n)
    streams = philox_torch.randint4x(seed, offs)
    for i in range(4):
        assert torch.equal(got[i], philox_torch.to_int32(streams[i])), f"randint4x stream {i}"
    assert torch.equal(got[4], philox_torch.rand(seed, offs).view(torch.int32))
    assert torch.equal(got[5], philox_torch.uniforms(seed, 0, n).view(torch.int32))


def test_known_answer_vector():
    """Random123's philox4x32_10 KAT: counter 0, key 0."""
    c = philox_torch.randint4x(0, torch.zeros(1, dtype=torch.int64))
    assert [int(t) for t in c] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_element_stream_layout():
    """Element i takes lane i % 4 of the block at counter i // 4, from any start."""
    seed = 99
    blocks = torch.stack(philox_torch.randint4x(seed, torch.arange(10)), 1).reshape(-1)
    want = philox_torch.uint_to_uniform(blocks)
    assert torch.equal(philox_torch.uniforms(seed, 0, 40), want)
    assert torch.equal(philox_torch.uniforms(seed, 5, 23), want[5:23])
    assert philox.uniform_counter(13) == (3, 1)


def test_uniform_statistics():
    """Mean and variance within 5 standard errors of U[0, 1)'s 1/2 and 1/12."""
    u = philox_torch.uniforms(7, 0, 200_000).double()
    n = u.numel()
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12) ** 0.5 / n**0.5
    assert abs(float(u.var()) - 1 / 12) < 5 * (1 / 180) ** 0.5 / n**0.5


def test_seeds_differ_and_offsets_differ():
    offs = torch.arange(4096)
    assert not torch.equal(philox_torch.randint(1, offs), philox_torch.randint(2, offs))
    assert philox_torch.randint(1, offs).unique().numel() == 4096


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, True, "3"])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        philox_torch.rand(bad, torch.arange(3))


@pytest.mark.parametrize("seed", [0, 3, 2**40 + 3, 2**63 - 1])
def test_native_equals_torch_twin(seed):
    pytest.importorskip("numba")
    from gradpack.kernels import philox_cpu

    offs = torch.arange(0, 4099) * 977 + 2**33
    got = philox_cpu.randint4x(seed, offs.numpy())
    want = philox_torch.randint4x(seed, offs)
    for i in range(4):
        assert np.array_equal(got[i].astype(np.int64), want[i].numpy()), f"stream {i}"
    for lo, hi in [(0, 1), (3, 4100), (1 << 20, (1 << 20) + 9)]:
        u = philox_cpu.uniforms(seed, lo, hi)
        assert np.array_equal(u.view(np.int32), philox_torch.uniforms(seed, lo, hi).numpy()
                              .view(np.int32)), (lo, hi)
