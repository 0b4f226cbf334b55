"""Every update rule against a plain numpy implementation of its seed equations, plus the
contract: seeds, hyperparameters, compressor-class warnings, checkpoints, bad input."""

import io
import warnings

import numpy as np
import pytest
import torch

from gradpack.algorithms import (
    SERVER,
    CompressorWarning,
    communicate,
    from_spec,
    hparam_names,
    names,
)
from gradpack.comm import LocalTransport
from gradpack.compressors import from_spec as compressor

N, D, STEPS = 3, 24, 5


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(STEPS, N, D)).astype(np.float32)


def _run(alg, grads, topology="allgather"):
    """Directions and final states from the shared round driver."""
    t = LocalTransport(N)
    states = [alg.init_state(D, world_size=N, rank=i) for i in range(N)]
    dirs = []
    for k in range(len(grads)):
        g = [torch.from_numpy(grads[k, i]) for i in range(N)]
        dirs.append(communicate(alg, t, states, g, step=k, topology=topology).numpy().copy())
    return np.stack(dirs), states


def _C(alg, r, step, rank):
    """C(r) with rank ``rank``'s seed at ``step``: the compressor's own encode + decode."""
    c = alg.compressor
    s = alg.seed_for(step, rank)
    x = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32))
    return c.decode(c.encode(x, seed=s), x.numel(), seed=s).numpy()


def _ref(alg, G):
    """Seed equations in numpy (float32 where the fused kernel is float32)."""
    f32 = np.float32
    name, n = alg.name, G.shape[1]
    e = np.zeros((n, D), f32)   # EF14 e_i / DORE h_i
    v = np.zeros((n, D), f32)
    u = np.zeros((n, D), f32)
    gi = np.zeros((n, D), f32)
    g = np.zeros(D, f32)
    h_srv = np.zeros(D, f32)
    e_srv = np.zeros(D, f32)
    dirs = []
    for k in range(len(G)):
        if name == "dcgd":  # x <- x - gamma mean C(grad f_i)            (seed 004)
            dirs.append(np.mean([_C(alg, G[k, i], k, i) for i in range(n)], 0))
        elif name == "ef14":  # Delta_i = C(e_i + gamma grad); e_i += gamma grad - Delta_i
            gam = f32(alg.gamma)
            r = e + G[k] * gam
            delta = np.stack([_C(alg, r[i], k, i) for i in range(n)])
            e = r - delta
            dirs.append(delta.mean(0) / alg.gamma)
        elif name.startswith("ef21"):  # seed 003, Algorithm 1
            eta = f32(1.0 if k == 0 else getattr(alg, "eta", 1.0))
            v = v * (f32(1) - eta) + G[k] * eta
            u = u * (f32(1) - eta) + v * eta
            src = {"ef21": G[k], "ef21-sgdm": v, "ef21-sgd2m": u}[name]
            r = src - gi
            c = r.copy() if k == 0 else np.stack([_C(alg, r[i], k, i) for i in range(n)])
            gi = gi + c
            g = g + c.mean(0)
            dirs.append(g.copy())
        elif name == "dore":  # seed 002, R = 0
            a, b = alg.alpha_for(D), alg.beta_for(D)
            delta_hat = np.stack([_C(alg, G[k, i] - e[i], k, i) for i in range(n)])
            e = e + delta_hat * f32(a)
            dh = delta_hat.mean(0)
            g_hat = h_srv + dh
            h_srv = h_srv + a * dh
            q = -alg.gamma * g_hat + alg.eta_for(D) * e_srv
            q_hat = _C(alg, q, k, SERVER)
            e_srv = q - q_hat
            dirs.append(-b * q_hat / alg.gamma)
    return np.stack(dirs), {"e": e, "v": v, "u": u, "gi": gi, "g": g, "h": h_srv, "es": e_srv}


CASES = [
    ("dcgd", "qsgd:15:8", {}),
    ("dcgd", "identity", {}),
    ("ef14", "topk:0.25", {"gamma": 0.1}),
    ("ef14", "sign", {}),
    ("ef21", "topk:0.25", {}),
    ("ef21-sgdm", "sign", {"eta": 0.3}),
    ("ef21-sgd2m", "topk:5", {"eta": 0.2}),
    ("dore", "qsgd:15:8", {}),
    ("dore", "qsgd:3", {"alpha": 0.2, "beta": 0.7, "eta": 0.5, "gamma": 0.05}),
]


@pytest.mark.parametrize("name, spec, hp", CASES)
def test_update_rule_matches_numpy(name, spec, hp):
    alg = from_spec(name, spec, backend="torch", seed=7, **hp)
    G = _grads()
    got, states = _run(alg, G)
    want, ref = _ref(alg, G)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    worker = {"ef14": [("e_i", "e")], "ef21": [("g_i", "gi")],
              "ef21-sgdm": [("v_i", "v"), ("g_i", "gi")],
              "ef21-sgd2m": [("v_i", "v"), ("u_i", "u"), ("g_i", "gi")],
              "dore": [("h_i", "e")]}.get(name, [])
    for i in range(N):
        for key, rkey in worker:
            np.testing.assert_allclose(states[i][key].numpy(), ref[rkey][i], rtol=2e-6, atol=2e-6)
    server = {"ef21": [("g", "g")], "ef21-sgdm": [("g", "g")], "ef21-sgd2m": [("g", "g")],
              "dore": [("h", "h"), ("e", "es")]}.get(name, [])
    for key, rkey in server:
        np.testing.assert_allclose(states[0][key].numpy(), ref[rkey], rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name, spec, hp", CASES)
def test_server_topology_gives_the_same_iterates(name, spec, hp):
    """gather -> server_step -> broadcast -> apply_downlink is the all-gather round exactly
    (DORE's downlink is compressed in both; the others' downlink is lossless fp32)."""
    alg = from_spec(name, spec, backend="torch", **hp)
    G = _grads(1)
    a, _ = _run(alg, G, "allgather")
    b, _ = _run(alg, G, "server")
    np.testing.assert_array_equal(a, b)


def test_ef21_first_step_is_uncompressed():
    alg = from_spec("ef21", "topk:0.1", backend="torch")
    assert alg.payload_bytes(D, 0) == compressor("identity").payload_bytes(D)
    assert alg.payload_bytes(D, 1) == compressor("topk:0.1").payload_bytes(D)
    G = _grads()
    dirs, states = _run(alg, G[:1])
    np.testing.assert_array_equal(states[1]["g_i"].numpy(), G[0, 1])
    np.testing.assert_allclose(dirs[0], G[0].mean(0), rtol=1e-6)


def test_seed_for_is_a_function_of_its_coordinates():
    alg = from_spec("dcgd", "qsgd:4", seed=3)
    keys = {alg.seed_for(k, r, s) for k in range(5) for r in [SERVER, 0, 1, 2] for s in range(3)}
    assert len(keys) == 5 * 4 * 3
    assert alg.seed_for(4, 2, 1) == from_spec("dcgd", "qsgd:4", seed=3).seed_for(4, 2, 1)
    assert alg.seed_for(4, 2, 1) != alg.with_seed(4).seed_for(4, 2, 1)
    assert all(0 <= s < 2**63 for s in keys)
    with pytest.raises(ValueError, match="step"):
        alg.seed_for(-1, 0)
    with pytest.raises(ValueError, match="rank"):
        alg.seed_for(0, 1.5)


def test_from_spec_names_and_errors():
    assert names() == ["dcgd", "ef14", "ef21", "ef21-sgdm", "ef21-sgd2m", "dore", "local-sgd",
                       "scaffold", "dsgd", "gradient-tracking", "choco-sgd"]
    assert hparam_names("dsgd") == ["graph", "local_steps", "seed"]
    assert from_spec("dsgd", "identity", graph="exp", local_steps=2).hparams == {
        "graph": "exp", "local_steps": 2}
    with pytest.raises(ValueError, match="unknown algorithm"):
        from_spec("ef22", "sign")
    with pytest.raises(ValueError, match="does not take"):
        from_spec("ef21", "sign", eta=0.1)
    with pytest.raises(ValueError, match="eta"):
        from_spec("ef21-sgdm", "sign", eta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        from_spec("ef14", "sign", gamma=-1.0)
    with pytest.raises(ValueError, match="Compressor"):
        from_spec("ef21", object())
    alg = from_spec("dore", "qsgd:4", alpha=0.1)
    assert alg.hparams == {"alpha": 0.1, "beta": None, "eta": None, "gamma": 1.0}
    omega = alg.compressor.omega(1000)
    assert alg.eta_for(1000) == (omega + 1) ** -0.5 and alg.beta_for(1000) == 1 / (omega + 1)
    assert "dore" in repr(alg) and alg.compressor.spec.startswith("qsgd")


@pytest.mark.parametrize("name, spec, warns", [
    ("ef21", "qsgd:1", True),       # unbiased, omega >= 1: not contractive
    ("ef14", "randk:0.1", True),
    ("dore", "topk:0.1", True),     # biased where DORE assumes unbiased
    ("dcgd", "topk:1", True),       # seed 004: may diverge
    ("ef21", "topk:0.1", False),
    ("dore", "qsgd:4", False),
    ("dcgd", "fp16", False),        # biased but within rounding of exact
])
def test_compressor_class_warnings(name, spec, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_spec(name, spec)
    got = [w for w in caught if issubclass(w.category, CompressorWarning)]
    assert bool(got) == warns, [str(w.message) for w in got]


def test_checkpoint_resume_is_bit_identical():
    alg = from_spec("ef21-sgd2m", "qsgd:7:16", backend="torch", eta=0.3)
    G = _grads(2)
    straight, _ = _run(alg, G)
    t = LocalTransport(N)
    states = [alg.init_state(D, world_size=N, rank=i) for i in range(N)]
    dirs = []
    for k in range(STEPS):
        if k == 2:  # checkpoint and reload every state through torch.save
            buf = io.BytesIO()
            torch.save(states, buf)
            buf.seek(0)
            states = torch.load(buf)
        g = [torch.from_numpy(G[k, i]) for i in range(N)]
        dirs.append(communicate(alg, t, states, g, step=k).numpy().copy())
    np.testing.assert_array_equal(np.stack(dirs), straight)


def test_bad_input_leaves_state_alone():
    alg = from_spec("ef21", "topk:0.25", backend="torch")
    state = alg.init_state(D, world_size=2, rank=1)
    state["g_i"].fill_(0.5)
    grad = torch.ones(D)
    grad[3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        alg.worker_step(state, grad, step=1, rank=1)
    assert bool((state["g_i"] == 0.5).all())
    with pytest.raises(ValueError, match="rank 0"):
        alg.worker_step(state, torch.ones(D), step=1, rank=0)
    with pytest.raises(ValueError, match="elements"):
        alg.worker_step(state, torch.ones(D + 1), step=1, rank=1)
    with pytest.raises(ValueError, match="lacks"):
        alg.worker_step({"numel": D}, torch.ones(D), step=1, rank=1)
    with pytest.raises(ValueError, match=r"\[2, P\]"):
        alg.aggregate(state, torch.zeros(3, alg.payload_bytes(D, 1), dtype=torch.uint8), step=1)
    with pytest.raises(ValueError, match="rank must be"):
        alg.init_state(D, world_size=2, rank=2)


@pytest.mark.triton
@pytest.mark.parametrize("name, spec, hp", [("ef21-sgd2m", "sign", {"eta": 0.3}),
                                            ("dore", "qsgd:7:16", {})])
def test_fused_worker_step_triton_equals_torch(tdevice, name, spec, hp):
    """The fused worker pass (momentum prologue, compression, state epilogue) gives the same
    payload bytes and state bits on both backends."""
    G = _grads(3)[:3]
    runs = []
    for backend in ("torch", "triton"):
        alg = from_spec(name, spec, backend=backend, **hp)
        state = alg.init_state(D, tdevice, world_size=N, rank=1)
        payloads = [alg.worker_step(state, torch.from_numpy(G[k, 1]).to(tdevice), step=k,
                                    rank=1).cpu() for k in range(3)]
        runs.append((payloads, {k: v.cpu() for k, v in state.items()
                                if isinstance(v, torch.Tensor)}))
    (pa, sa), (pb, sb) = runs
    for a, b in zip(pa, pb, strict=True):
        assert torch.equal(a, b)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
