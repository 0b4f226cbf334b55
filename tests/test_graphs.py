"""Seed 001's topologies: mixing matrices, consensus rates and the one-peer exponential
graph's exact averaging."""

import math

import pytest
import torch

from gradpack.comm import graphs

SPECS = ["ring", "exp", "one-peer-exp", "complete"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 8, 16])
def test_weights_are_doubly_stochastic(spec, n):
    g = graphs.from_spec(spec, n)
    for k in range(2 * g.period):
        W = g.weights(k)
        ones = torch.ones(n, dtype=torch.float64)
        # uniform weights 1/(deg+1) summed deg+1 times: exact up to one rounding per add
        tol = (g.degree(k) + 1) * torch.finfo(torch.float64).eps
        torch.testing.assert_close(W @ ones, ones, rtol=0, atol=tol)
        torch.testing.assert_close(ones @ W, ones, rtol=0, atol=tol)
        assert (W >= 0).all()
        for i in range(n):  # the neighbour lists are W's sparsity pattern
            nz = set(torch.nonzero(W[i]).flatten().tolist()) - {i}
            assert nz == set(g.in_neighbors(i, k))
            assert len(g.out_neighbors(i, k)) == g.degree(k)


def test_degrees_are_the_seed_communication_costs():
    assert graphs.from_spec("ring", 16).degree() == 2
    assert graphs.from_spec("exp", 16).degree() == 4  # ceil(log2 16) neighbours
    assert graphs.from_spec("exp", 6).degree() == 3
    g = graphs.from_spec("one-peer-exp", 16)
    assert g.time_varying and g.period == 4
    assert [g.degree(k) for k in range(8)] == [1] * 8  # O(1) per iteration
    assert [g.offsets(k) for k in range(5)] == [(1,), (2,), (4,), (8,), (1,)]


def test_seed_example_exponential_matrix():
    """Seed 001's n = 6 example: weight 1/4 on itself and on 3 neighbours (the seed's
    picture is our W transposed, which has the same rho)."""
    W = graphs.from_spec("exp", 6).weights()
    assert set(W.unique().tolist()) == {0.0, 0.25}
    assert (W > 0).sum(1).tolist() == [4] * 6


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_one_peer_exponential_averages_exactly_after_log2_n_steps(n):
    """Seed 001's theorem: W^(k+l) ... W^(k) = 11^T/n for l >= tau - 1. Every entry of the
    product is a dyadic rational with at most tau bits, so float64 gives it exactly."""
    g = graphs.from_spec("one-peer-exp", n)
    tau = g.exact_average_steps()
    assert tau == round(math.log2(n))
    J = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    for start in range(tau + 1):
        P = torch.eye(n, dtype=torch.float64)
        for k in range(start, start + tau):
            P = g.weights(k) @ P
        assert torch.equal(P, J), (n, start)
        if tau > 1:  # and not a step earlier
            Q = torch.eye(n, dtype=torch.float64)
            for k in range(start, start + tau - 1):
                Q = g.weights(k) @ Q
            assert not torch.equal(Q, J)
    # applied to data: x -> the global average, to rounding (tau halvings, one rounding each)
    x0 = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    x = x0.clone()
    for k in range(tau):
        x = g.weights(k) @ x
    bound = 2 * tau * torch.finfo(torch.float64).eps * float(x0.abs().max())
    assert float((x - x0.mean()).abs().max()) <= bound


@pytest.mark.parametrize("n", [3, 6, 12])
def test_one_peer_exponential_is_not_exact_unless_n_is_a_power_of_2(n):
    g = graphs.from_spec("one-peer-exp", n)
    with pytest.raises(ValueError, match="power of 2"):
        g.exact_average_steps()
    P = torch.eye(n, dtype=torch.float64)
    for k in range(g.period):
        P = g.weights(k) @ P
    assert float((P - 1.0 / n).abs().max()) > 1e-3


@pytest.mark.parametrize("n", [4, 6, 8, 10, 12, 16, 32, 64, 100])
def test_static_exponential_rho_is_one_minus_two_over_tau_plus_one(n):
    """Seed 001 (Ying et al. 2021): rho = 1 - 2/(tau+1) for even n, tau = ceil(log2 n):
    the gap 1 - rho = O(1/log2 n)."""
    tau = math.ceil(math.log2(n))
    rho = graphs.from_spec("exp", n).rho()
    assert rho == pytest.approx(1 - 2 / (tau + 1), abs=1e-12)


@pytest.mark.parametrize("n", [5, 7, 9, 33])
def test_static_exponential_rho_below_the_bound_for_odd_n(n):
    tau = math.ceil(math.log2(n))
    assert graphs.from_spec("exp", n).rho() < 1 - 2 / (tau + 1)


def test_ring_gap_shrinks_like_one_over_n_squared_while_exp_gap_like_one_over_log_n():
    """Ring: rho = 1/3 + 2/3 cos(2 pi/n), so n^2 (1 - rho) -> 4 pi^2 / 3; exp: (tau + 1)(1 - rho)
    = 2. At n = 64 the two closed forms give gaps 2/7 and 0.00321: 88.9x."""
    for n in (8, 16, 32, 64, 128):
        ring = graphs.from_spec("ring", n).rho()
        assert ring == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / n), abs=1e-12)
        # 1 - cos t = 2 sin^2(t/2) in [t^2/2 (1 - t^2/12), t^2/2]
        t = 2 * math.pi / n
        assert 2 / 3 * t**2 / 2 * (1 - t**2 / 12) <= 1 - ring + 1e-15 <= 2 / 3 * t**2 / 2 + 1e-15
    gap_ring = 1 - graphs.from_spec("ring", 64).rho()
    gap_exp = 1 - graphs.from_spec("exp", 64).rho()
    assert 88 < gap_exp / gap_ring < 90
    assert graphs.from_spec("complete", 8).rho() == pytest.approx(0.0, abs=1e-15)


def test_bad_graphs():
    with pytest.raises(ValueError, match="not connected"):
        graphs.circulant(8, [2])
    with pytest.raises(ValueError, match="not connected"):
        graphs.circulant(6, [2, 4])
    assert graphs.circulant(6, [2, 3]).degree() == 2
    with pytest.raises(ValueError, match="unknown graph"):
        graphs.from_spec("torus", 4)
    with pytest.raises(ValueError, match="positive int"):
        graphs.from_spec("ring", 0)
    with pytest.raises(ValueError, match="8 nodes, expected 4"):
        graphs.from_spec(graphs.from_spec("ring", 8), 4)
    with pytest.raises(ValueError, match="asymptotically"):
        graphs.from_spec("exp", 8).exact_average_steps()
    with pytest.raises(ValueError, match="node"):
        graphs.from_spec("ring", 4).in_neighbors(4)
    a, b = graphs.from_spec("exp", 8), graphs.from_spec("one-peer-exp", 8)
    assert a.digest() != b.digest() and a == graphs.from_spec("exp", 8)
