"""Algorithm-layer transactions and validation (issue 14).

- every hyperparameter is checked once, at construction: a real number (an int for ``seed``
  and ``local_steps``), finite, in its paper's range, finite and nonzero in float32; anything
  else is a ``ValueError`` naming it (never a ``TypeError`` from a comparison);
- every phase either completes or raises with every state tensor bit for bit as it was: a
  corrupt peer payload (:class:`CorruptPayloadError`), a non-finite input or a float32
  overflow of the state it would produce (:class:`NonFiniteError`).

Everything runs in one process on the torch backend at small sizes: the phases are called
directly, or through :func:`communicate` / :func:`peer_round` over a :class:`LocalTransport`.
"""

import math
import warnings

import pytest
import torch

from gradpack.algorithms import SERVER, CompressorWarning, communicate, from_spec, peer_round
from gradpack.algorithms.peer_round import run_phase
from gradpack.comm import LocalTransport
from gradpack.comm.p2p import LocalExchange
from gradpack.compressors.faults import Faults
from gradpack.errors import CorruptPayloadError, NonFiniteError
from gradpack.kernels.fusion import Fusion

D, N = 64, 2
BIG = 3e38  # finite in float32; two of them are not
BAD_REALS = [float("inf"), float("nan"), 1e-300, "abc", True, -1.0]


def _alg(name, spec="identity", **hp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressorWarning)
        return from_spec(name, spec, backend="torch", **hp)


def _saved(state):
    return {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


def _assert_unchanged(state, saved):
    for k, v in saved.items():
        assert torch.equal(state[k], v), f"state[{k!r}] changed"


def _states(alg, n=N, d=D, **kw):
    return [alg.init_state(d, world_size=n, rank=i, **kw) for i in range(n)]


def _payloads(alg, states, grads, step):
    return torch.stack([alg.worker_step(s, g, step=step, rank=i)
                        for i, (s, g) in enumerate(zip(states, grads, strict=True))])


# -- hyperparameters ---------------------------------------------------------------------------
REAL_HPARAMS = [  # (algorithm, compressor, hparam, a value past its upper bound, None allowed)
    ("ef14", "topk:0.5", "gamma", None, False),
    ("ef21-sgdm", "topk:0.5", "eta", 1.5, False),
    ("ef21-sgd2m", "topk:0.5", "eta", 1.5, False),
    ("dore", "qsgd:4", "alpha", 1.5, True),
    ("dore", "qsgd:4", "beta", 1.5, True),
    ("dore", "qsgd:4", "eta", None, True),
    ("dore", "qsgd:4", "gamma", None, False),
    ("local-sgd", "identity", "server_lr", None, False),
    ("scaffold", "identity", "server_lr", None, False),
    ("choco-sgd", "topk:0.5", "gamma", 1.5, True),
]
BAD_HPARAMS = [
    pytest.param(name, spec, hp, value, id=f"{name}-{hp}={value!r}")
    for name, spec, hp, above, optional in REAL_HPARAMS
    for value in [*BAD_REALS, *([above] if above is not None else []),
                  *([] if optional else [None])]
]


@pytest.mark.parametrize("name, spec, hparam, value", BAD_HPARAMS)
def test_bad_real_hparam_is_a_value_error_naming_it(name, spec, hparam, value):
    with pytest.raises(ValueError, match=f"{name}: {hparam}") as err:
        _alg(name, spec, **{hparam: value})
    assert not isinstance(err.value, TypeError)


def test_real_hparams_at_the_edges_of_their_ranges():
    assert _alg("ef21-sgdm", "topk:0.5", eta=1).eta == 1.0  # eta in (0, 1]
    assert _alg("dore", "qsgd:4", eta=0).eta == 0.0  # no error compensation
    assert _alg("ef14", "topk:0.5", gamma=3e38).gamma == 3e38
    with pytest.raises(ValueError, match="ef21-sgdm: eta"):
        _alg("ef21-sgdm", "topk:0.5", eta=0.0)
    with pytest.raises(ValueError, match=r"ef14: gamma = 3\.5e\+38 overflows float32"):
        _alg("ef14", "topk:0.5", gamma=3.5e38)
    with pytest.raises(ValueError, match="dore: gamma = 1e-50 is 0 in float32"):
        _alg("dore", "qsgd:4", gamma=1e-50)


def test_derived_scales_must_fit_float32():
    with pytest.raises(ValueError, match="ef14: 1 / gamma"):  # gamma subnormal in fp32
        _alg("ef14", "topk:0.5", gamma=1e-39)
    with pytest.raises(ValueError, match="dore: beta / gamma"):
        _alg("dore", "qsgd:4", beta=1e-20, gamma=1e30)


@pytest.mark.parametrize("name", ["local-sgd", "scaffold", "dsgd", "gradient-tracking",
                                  "choco-sgd"])
@pytest.mark.parametrize("value", ["abc", True, 1.0, 0, -2, None])
def test_local_steps_must_be_a_positive_int(name, value):
    with pytest.raises(ValueError, match=f"{name}: .*local_steps"):
        _alg(name, local_steps=value)


@pytest.mark.parametrize("name", ["dcgd", "ef21", "dore", "dsgd"])
@pytest.mark.parametrize("value", ["abc", True, 1.5, -1, 2**63])
def test_seed_must_be_an_int_in_range(name, value):
    with pytest.raises(ValueError, match=f"{name}: seed"):
        _alg(name, seed=value)
    with pytest.raises(ValueError, match=f"{name}: seed"):
        _alg(name).with_seed(value)


@pytest.mark.parametrize("lr", ["abc", True, float("inf"), float("nan"), -0.1, 1e-300])
def test_lr_is_a_value_error(lr):
    alg = _alg("local-sgd", local_steps=1)
    states = _states(alg)
    t, ex = LocalTransport(N), LocalExchange(N)
    grads = [torch.ones(D)] * N
    with pytest.raises(ValueError, match="local-sgd: lr"):
        peer_round(alg, t, ex, states, grads, step=0, lr=lr)
    with pytest.raises(ValueError, match="local-sgd: lr"):
        run_phase(alg, t, ex, states, step=0, phase=0, lr=lr)
    with pytest.raises(ValueError, match="local-sgd: lr"):
        alg.local_update(states[0], grads[0], step=0, lr=lr)


def test_mixing_weights_are_checked():
    alg = _alg("dsgd", graph="ring")
    states = _states(alg, n=4)
    rows = torch.stack([alg.message(s, step=0, phase=0, rank=i, lr=0.1)
                        for i, s in enumerate(states)])
    for kw in ({"w_self": 1.5, "w": 0.25}, {"w_self": 0.5, "w": "abc"}):
        with pytest.raises(ValueError, match="dsgd: w"):
            alg.combine(states[0], rows[:2], [1, 3], step=0, phase=0, lr=0.1,
                        **{"w_self": 0.5, "w": 0.25, **kw})


# -- DORE's server step ------------------------------------------------------------------------
def _dore_round(alg, states, step, scale=1.0):
    g = torch.Generator().manual_seed(step)
    grads = [scale * torch.randn(D, generator=g) for _ in range(N)]
    return _payloads(alg, states, grads, step)


def _warm_dore(spec="qsgd:4:16"):
    """DORE after three rounds, with nonzero h and e (the identity leaves e = 0: set it)."""
    alg = _alg("dore", spec)
    states = _states(alg)
    for k in range(3):
        alg.aggregate(states[0], _dore_round(alg, states, k), step=k)
    if spec == "identity":
        states[0]["e"].normal_(generator=torch.Generator().manual_seed(4))
    assert states[0]["h"].abs().sum() > 0 and states[0]["e"].abs().sum() > 0
    return alg, states


@pytest.mark.parametrize("phase", ["aggregate", "server_step"])
def test_dore_corrupt_peer_payload_changes_no_state(phase):
    alg, states = _warm_dore()
    gathered = _dore_round(alg, states, 3)
    gathered[1, :4].view(torch.float32)[0] = float("nan")  # row 1's first bucket norm
    saved = _saved(states[0])
    with pytest.raises(CorruptPayloadError, match="row 1"):
        getattr(alg, phase)(states[0], gathered, step=3)
    _assert_unchanged(states[0], saved)


@pytest.mark.parametrize("phase", ["aggregate", "server_step"])
def test_dore_overflowing_server_step_changes_no_state(phase):
    """``q = -gamma (h + Delta_hat) + eta e`` overflows once ``h`` is near the top of float32:
    the old step had already written ``h`` when the encode of ``q`` raised."""
    alg, states = _warm_dore("identity")
    states[0]["h"].fill_(BIG)
    gathered = _payloads(alg, states, [torch.full((D,), BIG)] * N, 3)
    saved = _saved(states[0])
    with pytest.raises(NonFiniteError):
        getattr(alg, phase)(states[0], gathered, step=3)
    _assert_unchanged(states[0], saved)


def test_dore_payload_decoding_to_inf_changes_no_state():
    """A QSGD payload whose header passes the check (finite, 3e38) but whose level fields
    decode past float32 (levels above S are not read by the check): Delta_hat is inf."""
    alg, states = _warm_dore()
    gathered = _dore_round(alg, states, 3)
    gathered[:, :4].view(torch.float32)[:, 0] = BIG  # bucket 0's norm (4 header words)
    gathered[:, 16:24] = 0xFF  # bucket 0's sign and 3 level bits: level 7 > S = 4
    saved = _saved(states[0])
    with pytest.raises(NonFiniteError):
        alg.aggregate(states[0], gathered, step=3)
    _assert_unchanged(states[0], saved)


def test_dore_downlink_overflow_changes_no_state():
    """``direction = -beta q_hat / gamma`` overflows for a tiny gamma and a large error
    memory (``q ~ eta e``): the direction is checked before ``h`` and ``e`` are committed."""
    alg = _alg("dore", "identity", gamma=1e-30, beta=1.0, eta=1.0)
    states = _states(alg)
    states[0]["e"].fill_(1e9)
    gathered = _payloads(alg, states, [torch.full((D,), 1e9)] * N, 0)
    saved = _saved(states[0])
    with pytest.raises(NonFiniteError, match="direction"):
        alg.aggregate(states[0], gathered, step=0)
    _assert_unchanged(states[0], saved)


def test_dore_server_step_matches_the_seed_equations_bit_for_bit():
    """The reordered step computes what the seed's equations, in their order, compute."""
    alg, states = _warm_dore()
    h, e = states[0]["h"].clone(), states[0]["e"].clone()
    gathered = _dore_round(alg, states, 3)
    c, seed = alg.compressor, alg.seed_for(3, SERVER, 0)
    delta_hat = c.decode_sum(gathered, D, seeds=[alg.seed_for(3, i, 0) for i in range(N)],
                             scale=1 / N)
    q = torch.add(h, delta_hat)
    h.add_(delta_hat.mul_(alg.alpha_for(D)))
    q.mul_(-alg.gamma).add_(e * alg.eta_for(D))
    down = c.step(Fusion(update="error"), q, {"h": e}, seed=seed)
    direction = alg.aggregate(states[0], gathered, step=3)
    assert torch.equal(states[0]["h"], h) and torch.equal(states[0]["e"], e)
    expect = c.decode_sum(down[None], D, seeds=[seed], scale=-alg.beta_for(D) / alg.gamma)
    assert torch.equal(direction, expect)


# -- EF21's aggregate and the stateless ones ---------------------------------------------------
@pytest.mark.parametrize("topology", ["allgather", "server"])
def test_ef21_overflowing_aggregate_changes_no_state(topology):
    alg = _alg("ef21", "topk:0.5")
    states = _states(alg)
    communicate(alg, LocalTransport(N), states, [torch.ones(D)] * N, step=0)
    states[0]["g"].fill_(BIG)
    gathered = _payloads(alg, states, [torch.full((D,), BIG)] * N, 1)
    saved = _saved(states[0])
    with pytest.raises(NonFiniteError, match="ef21: aggregate at step 1 .*'g'"):
        if topology == "allgather":
            alg.aggregate(states[0], gathered, step=1, out=torch.empty(D))
        else:
            alg.server_step(states[0], gathered, step=1)
    _assert_unchanged(states[0], saved)


def test_ef21_float64_server_step_rolls_back_when_the_fp32_downlink_overflows():
    alg = _alg("ef21", "topk:0.5")
    states = _states(alg, dtype=torch.float64)
    states[0]["g"].fill_(1e39)  # fine in float64, not on the fp32 wire
    gathered = _payloads(alg, states, [torch.ones(D, dtype=torch.float64)] * N, 1)
    saved = _saved(states[0])
    with pytest.raises(NonFiniteError):
        alg.server_step(states[0], gathered, step=1)
    _assert_unchanged(states[0], saved)


def test_stateless_aggregate_overflow_raises():
    """EF14's direction is ``mean(Delta_i) / gamma``: past float32 for a small gamma."""
    alg = _alg("ef14", "topk:0.5", gamma=1e-3)
    states = _states(alg)
    for s in states:
        s["e_i"].fill_(BIG)
    gathered = _payloads(alg, states, [torch.ones(D)] * N, 0)
    with pytest.raises(NonFiniteError, match="ef14: aggregate"):
        alg.aggregate(states[0], gathered, step=0)


def test_dcgd_payload_decoding_to_inf_raises():
    alg = _alg("dcgd", "qsgd:4:16")
    states = _states(alg)
    gathered = _payloads(alg, states, [torch.ones(D)] * N, 0)
    gathered[:, :4].view(torch.float32)[:, 0] = BIG
    gathered[:, 16:24] = 0xFF  # past the 4 header words: sign and level bits all set
    with pytest.raises(NonFiniteError, match="dcgd: aggregate"):
        alg.aggregate(states[0], gathered, step=0)


def test_out_sharing_memory_with_state_is_refused():
    alg = _alg("ef21", "topk:0.5")
    states = _states(alg)
    gathered = _payloads(alg, states, [torch.ones(D)] * N, 0)
    with pytest.raises(ValueError, match="out shares memory"):
        alg.aggregate(states[0], gathered, step=0, out=states[0]["g"])


# -- worker steps ------------------------------------------------------------------------------
WORKERS = [  # (algorithm, compressor, hparams, state key filled with BIG)
    ("ef14", "topk:0.5", {}, "e_i"),
    ("ef21", "topk:0.5", {}, "g_i"),
    ("ef21-sgdm", "topk:0.5", {"eta": 1.0}, "g_i"),
    ("ef21-sgd2m", "topk:0.5", {"eta": 1.0}, "g_i"),
    ("dore", "identity", {}, "h_i"),
]


@pytest.mark.parametrize("name, spec, hp, key", WORKERS)
def test_worker_step_with_a_nonfinite_gradient_changes_no_state(name, spec, hp, key):
    alg = _alg(name, spec, **hp)
    state = _states(alg)[1]
    for k in alg.worker_state:
        state[k].normal_(generator=torch.Generator().manual_seed(1))
    saved = _saved(state)
    grad = torch.ones(D)
    grad[5] = float("nan")
    with pytest.raises(NonFiniteError):
        alg.worker_step(state, grad, step=1, rank=1)
    _assert_unchanged(state, saved)


@pytest.mark.parametrize("name, spec, hp, key", WORKERS)
def test_worker_step_overflow_restores_every_state_tensor(name, spec, hp, key):
    """``r = grad - g_i`` (``e_i + gamma grad`` for EF14) past float32 inside the fused
    pass: the momenta it also wrote are restored with ``h``."""
    alg = _alg(name, spec, **hp)
    state = _states(alg)[0]
    state[key].fill_(BIG)
    saved = _saved(state)
    grad = torch.full((D,), BIG if name == "ef14" else -BIG)
    with pytest.raises(NonFiniteError, match=f"{name}: worker step 1 of rank 0 .*{key}"):
        alg.worker_step(state, grad, step=1, rank=0)
    _assert_unchanged(state, saved)
    alg.worker_step(state, torch.zeros(D), step=1, rank=0)  # and the state still works


def test_deferred_checks_record_the_overflow_instead_of_reading():
    """Inside the DDP hook's deferred checks the step records a flag (the hook snapshots
    and restores); ``raise_first`` raises the same error."""
    alg = _alg("ef21", "topk:0.5")
    state = _states(alg)[0]
    state["g_i"].fill_(BIG)
    faults = Faults()
    with faults.deferred():
        alg.worker_step(state, torch.full((D,), -BIG), step=1, rank=0)
    with pytest.raises(NonFiniteError, match="g_i"):
        faults.raise_first()


def test_momenta_cannot_overflow_for_any_tested_eta():
    from gradpack.algorithms.checks import momentum_bounded
    from gradpack.kernels.fusion import Fusion
    for eta in [1e-30, 1e-7, 0.1, 1 / 3, 0.5, 0.7, 0.9999999, 1.0]:
        s = Fusion(momentum=1, eta=eta).scalars()
        assert momentum_bounded(s["keep"], s["take"]), eta


# -- model-per-worker algorithms ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["local-sgd", "scaffold", "dsgd", "gradient-tracking",
                                  "choco-sgd"])
def test_local_update_with_a_nonfinite_gradient_changes_no_state(name):
    alg = _alg(name)
    state = _states(alg)[0]
    for k in alg.worker_state:
        state[k].uniform_(generator=torch.Generator().manual_seed(2))
    saved = _saved(state)
    grad = torch.ones(D)
    grad[0] = float("inf")
    with pytest.raises(NonFiniteError, match=f"{name}: local update at step 0"):
        alg.local_update(state, grad, step=0, lr=0.1)
    _assert_unchanged(state, saved)
    if name == "scaffold":
        with pytest.raises(NonFiniteError, match="direction"):
            alg.direction(state, grad, step=0)
        _assert_unchanged(state, saved)


@pytest.mark.parametrize("name, hp", [
    ("local-sgd", {}), ("scaffold", {}), ("dsgd", {"graph": "ring"}),
    ("gradient-tracking", {"graph": "ring"}), ("choco-sgd", {"graph": "ring"}),
])
def test_combine_with_a_corrupt_payload_changes_no_state(name, hp):
    alg = _alg(name, "qsgd:4:16", **hp)
    n = 4
    states = _states(alg, n=n)
    g = torch.Generator().manual_seed(3)
    for s in states:
        for k in alg.worker_state:
            s[k].normal_(generator=g)
    for phase in range(len(alg.phases(0))):
        rows = torch.stack([alg.message(s, step=0, phase=phase, rank=i, lr=0.1)
                            for i, s in enumerate(states)])
        rows[1, :4].view(torch.float32)[0] = float("nan")  # row 1's first bucket norm
        saved = _saved(states[0])
        with pytest.raises(CorruptPayloadError, match="row 1"):
            alg.combine(states[0], rows, list(range(n)), step=0, phase=phase, lr=0.1,
                        w_self=0.5, w=0.25)
        _assert_unchanged(states[0], saved)


def test_choco_combine_overflow_changes_no_state():
    alg = _alg("choco-sgd", "identity", graph="ring", gamma=1.0)
    states = _states(alg, n=4)
    for s in states:
        s["x"].fill_(BIG)
    rows = torch.stack([alg.message(s, step=0, phase=0, rank=i, lr=0.1)
                        for i, s in enumerate(states)])
    saved = _saved(states[0])
    with pytest.raises(NonFiniteError, match="choco-sgd: combine"):
        alg.combine(states[0], rows[[1, 3]], [1, 3], step=0, phase=0, lr=0.1,
                    w_self=1 / 3, w=1.0)
    _assert_unchanged(states[0], saved)


def test_a_clean_run_is_unchanged_by_the_checks():
    """The transactions only add checks: the same run with check_finite off (no checks, no
    snapshots) gives bit-identical iterates, for every algorithm of the server kind."""
    from gradpack.compressors import from_spec as compressor
    for name, spec in [("ef21-sgd2m", "topk:0.25"), ("dore", "qsgd:4:16"), ("ef14", "sign")]:
        runs = []
        for check in (True, False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CompressorWarning)
                alg = from_spec(name, compressor(spec, backend="torch", check_finite=check))
            states = _states(alg)
            dirs = [communicate(alg, LocalTransport(N), states,
                                [torch.randn(D, generator=torch.Generator().manual_seed(10 * k + i))
                                 for i in range(N)], step=k, topology=topo)
                    for k, topo in enumerate(["allgather", "server"] * 2)]
            runs.append((dirs, states))
        for a, b in zip(runs[0][0], runs[1][0], strict=True):
            assert torch.equal(a, b), name
        for sa, sb in zip(runs[0][1], runs[1][1], strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in alg.worker_state + alg.server_state)
    assert math.isfinite(float(runs[0][0][-1].sum()))
