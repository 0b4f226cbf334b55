"""The torch Philox twin reproduces Triton's tl.randint4x / tl.rand bit for bit."""

import pytest
import torch

from gradpack.kernels import philox


@pytest.mark.triton
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 - 1, 2**31, 2**40 + 7, 2**63 - 1])
@pytest.mark.parametrize("n", [1, 7, 1000, 3001])
def test_matches_triton(tdevice, seed, n):
    from gradpack.kernels.philox_triton import draw

    got = draw(seed, n, tdevice).cpu()
    offs = torch.arange(n)
    streams = philox.randint4x(seed, offs)
    for i in range(4):
        assert torch.equal(got[i], philox.to_int32(streams[i])), f"randint4x stream {i}"
    assert torch.equal(got[4], philox.rand(seed, offs).view(torch.int32))


def test_known_answer():
    # Philox4x32-10 known-answer vector (Random123 kat_vectors: counter 0, key 0)
    c = philox.randint4x(0, torch.zeros(1, dtype=torch.int64))
    assert [int(v) for v in c] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_rand_range_and_uniformity():
    u = philox.rand(7, torch.arange(200_000))
    assert u.dtype == torch.float32
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    # mean of U(0,1): standard error 1/sqrt(12 n) ~ 6.5e-4; 5 sigma
    assert abs(float(u.double().mean()) - 0.5) < 5 * (1 / (12 * 200_000) ** 0.5)


def test_seeds_and_offsets_decorrelate():
    offs = torch.arange(4096)
    assert not torch.equal(philox.randint(1, offs), philox.randint(2, offs))
    assert philox.randint(1, offs).unique().numel() == 4096


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, True])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        philox.rand(bad, torch.arange(3))


@pytest.mark.slow
def test_compiled_rounds_equal_eager(monkeypatch):
    """Large CPU draws go through torch.compile; integer-only, so not a bit may change."""
    monkeypatch.setattr(philox, "COMPILE_MIN", 1000)
    monkeypatch.setattr(philox, "_compiled", None)
    monkeypatch.delenv("GRADPACK_NO_COMPILE", raising=False)
    offs = torch.arange(5, 5000)
    got = philox.randint4x(2**40 + 3, offs)
    if philox._compiled is False:  # it warned and fell back to eager
        pytest.skip("torch.compile is unavailable on this machine (eager Philox is used)")
    got_u = philox.rand(2**40 + 3, offs)
    assert philox._compiled is not None, "the compiled path did not run"
    monkeypatch.setattr(philox, "COMPILE_MIN", 10**12)
    want = philox.randint4x(2**40 + 3, offs)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert torch.equal(got_u, philox.rand(2**40 + 3, offs))
