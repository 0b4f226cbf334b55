"""The simulator's history and checks, and the ``gradpack simulate`` command."""

import json
import warnings

import numpy as np
import pytest
import torch

from gradpack.algorithms import CompressorWarning, from_spec
from gradpack.cli import main
from gradpack.comm import Link
from gradpack.sim.core import simulate
from gradpack.sim.experiments import Run
from gradpack.sim.problems import logreg, quadratic, top1


def _quad():
    return quadratic(n=3, d=12, mu=0.3, seed=2)


def test_history_shapes_and_counts():
    p = _quad()
    alg = from_spec("ef21", "topk:0.25", backend="torch")
    link = Link(bandwidth=1e6, latency=1e-3)
    h = simulate(alg, p.grad_fns, p.x0, steps=7, lr=0.5 / p.L, loss_fn=p.loss_fn,
                 grad_fn=p.grad_fn, link=link)
    assert h.steps.tolist() == list(range(8))
    for arr in (h.bits_up, h.bits_down, h.bytes_up, h.bytes_down):
        assert arr.shape == (8, 3) and arr.dtype == np.int64
    assert h.loss.shape == h.grad_norm_sq.shape == h.time.shape == (8,)
    assert h.bits_up[0].sum() == 0 and (h.bits_down == 0).all()
    assert h.bits_up[-1, 0] == alg.uplink_bits(12, 0) + 6 * alg.uplink_bits(12, 1)
    assert h.time[1] == pytest.approx(link.round_time("allgather", 3, alg.payload_bytes(12, 0)))
    assert h.diverged_at is None and h.x.dtype == torch.float64
    assert h.loss[-1] < h.loss[0] and h.grad_norm_sq[-1] < h.grad_norm_sq[0]
    assert h.bits_per_worker("total")[-1] == h.bits_per_worker("up")[-1]


def test_identity_dcgd_is_gradient_descent():
    """float32 messages of an fp64 iterate: GD up to float32 rounding of the gradients."""
    p = _quad()
    lr = 0.5 / p.L
    h = simulate(from_spec("dcgd", "identity", backend="torch"), p.grad_fns, p.x0, steps=20,
                 lr=lr)
    x = p.x0.clone()
    for _ in range(20):
        x = x - lr * p.grad_fn(x)
    np.testing.assert_allclose(h.x.numpy(), x.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iterate_dtype_is_kept(dtype):
    p = _quad()
    h = simulate(from_spec("ef21-sgdm", "sign", backend="torch"), p.grad_fns,
                 p.x0.to(dtype), steps=3, lr=lambda k: 0.1 / (k + 1))
    assert h.x.dtype == dtype


def test_divergence_stops_and_pads_with_nan():
    p = top1()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressorWarning)
        alg = from_spec("dcgd", "topk:1", backend="torch")
    h = simulate(alg, p.grad_fns, p.x0 * 1e36, steps=50, lr=0.5, loss_fn=p.loss_fn)
    assert h.diverged_at is not None and h.diverged_at < 50
    assert np.isnan(h.loss[-1])
    assert (h.bits_up[-1] == h.bits_up[h.diverged_at]).all()


def test_seed_changes_only_random_compressors():
    p = _quad()
    a = simulate(from_spec("dcgd", "qsgd:2", backend="torch"), p.grad_fns, p.x0, steps=3,
                 lr=0.1, seed=0)
    b = simulate(from_spec("dcgd", "qsgd:2", backend="torch"), p.grad_fns, p.x0, steps=3,
                 lr=0.1, seed=1)
    c = simulate(from_spec("dcgd", "qsgd:2", backend="torch"), p.grad_fns, p.x0, steps=3,
                 lr=0.1, seed=0)
    assert not torch.equal(a.x, b.x) and torch.equal(a.x, c.x)


def test_bad_arguments():
    p = _quad()
    alg = from_spec("dcgd", "identity", backend="torch")
    with pytest.raises(ValueError, match="Algorithm"):
        simulate("ef21", p.grad_fns, p.x0, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="at least one"):
        simulate(alg, [], p.x0, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="topology"):
        simulate(alg, p.grad_fns, p.x0, steps=1, lr=0.1, topology="ring")
    with pytest.raises(ValueError, match="lr"):
        simulate(alg, p.grad_fns, p.x0, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="12 elements"):
        simulate(alg, [lambda x, k: torch.zeros(3)] * 2, p.x0, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="float32 or float64"):
        simulate(alg, p.grad_fns, p.x0.half(), steps=1, lr=0.1)


@pytest.mark.parametrize("dataset", ["breast_cancer", "synthetic"])
def test_logreg_gradient_matches_finite_differences(dataset):
    p = logreg(dataset, n=4, seed=0)
    x = (torch.arange(p.d, dtype=torch.float64) % 7 - 3) / 10
    # the hand-written gradient against central differences of the loss
    g = p.grad_fn(x)
    eps = 1e-6
    for j in (0, p.d // 2, p.d - 1):
        e = torch.zeros_like(x)
        e[j] = eps
        fd = (p.loss_fn(x + e) - p.loss_fn(x - e)) / (2 * eps)
        assert g[j].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)
    per_worker = sum(f(x, 0) for f in p.grad_fns) / p.n  # f = (1/n) sum_i f_i
    torch.testing.assert_close(g, per_worker, rtol=1e-12, atol=1e-12)
    stoch = logreg(dataset, n=4, seed=0, batch=1)
    assert torch.equal(stoch.grad_fns[1](x, 5), stoch.grad_fns[1](x, 5))
    assert not torch.equal(stoch.grad_fns[1](x, 5), stoch.grad_fns[1](x, 6))


def test_run_spec_parsing():
    r = Run.parse("ef21-sgdm/topk:0.1/eta=0.2/lr=0.5")
    assert (r.algorithm, r.compressor, r.hparams, r.lr_scale) == \
        ("ef21-sgdm", "topk:0.1", {"eta": 0.2}, 0.5)
    r = Run.parse("dsgd/identity/graph=one-peer-exp/local_steps=4")
    assert r.hparams == {"graph": "one-peer-exp", "local_steps": 4}
    assert r.label == "dsgd[identity,graph=one-peer-exp,local_steps=4]"
    with pytest.raises(ValueError, match="ALG/COMPRESSOR"):
        Run.parse("ef21")
    with pytest.raises(ValueError, match="key=value"):
        Run.parse("ef21/topk:1/eta")


def test_cli_writes_table_json_and_plot(tmp_path, capsys):
    rc = main(["simulate", "top1", "--steps", "15", "--out", str(tmp_path), "--bandwidth",
               "1e6", "--run", "dcgd/topk:1/lr=0.5", "--run", "ef21/topk:1/lr=0.5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dcgd[topk:1]" in out and "ef21[topk:1]" in out
    data = json.loads((tmp_path / "top1.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["dcgd[topk:1]", "ef21[topk:1]"]
    assert len(data["runs"][0]["loss"]) == 16
    assert (tmp_path / "top1.png").stat().st_size > 10_000


def test_cli_bits_to_target_column(tmp_path, capsys):
    """``--target``: each run's bits (up + down, per worker) at its first step with
    loss <= target * f(x0), and the ratio to the first run's; "-" where never reached."""
    rc = main(["simulate", "top1", "--steps", "60", "--out", str(tmp_path), "--no-plot",
               "--target", "0.05", "--run", "dcgd/identity/lr=0.5",
               "--run", "ef21/topk:1/lr=0.5", "--run", "dcgd/topk:1/lr=0.5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "to 0.05 f(x0)" in out and "100.00%" in out
    data = json.loads((tmp_path / "top1.json").read_text())
    gd, ef21, dcgd = (np.array(r["loss"], dtype=float) for r in data["runs"])
    k_gd = int(np.flatnonzero(gd <= 0.05 * gd[0])[0])
    assert f"{96 * k_gd / 1e6:.4g}" in out  # identity: 3 x 32 bits up per step, none down
    assert not (dcgd[np.isfinite(dcgd)] <= 0.05 * dcgd[0]).any()  # shown as "-"
    assert (ef21 <= 0.05 * ef21[0]).any()


def test_cli_graph_and_local_steps_overrides(tmp_path, capsys):
    """``--graph`` / ``--local-steps`` reach the runs that take them; the table and JSON have
    messages per worker (2 per step on exp with n = 4: offsets 1 and 2) and consensus."""
    rc = main(["simulate", "quadratic", "--workers", "4", "--steps", "12", "--no-plot",
               "--out", str(tmp_path), "--graph", "exp", "--local-steps", "3",
               "--run", "dsgd/identity/lr=0.1", "--run", "dcgd/identity/lr=0.1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dsgd[identity,graph=exp,local_steps=3]" in out and "msgs/w" in out
    data = json.loads((tmp_path / "quadratic.json").read_text())
    dsgd, dcgd = data["runs"]
    assert dsgd["messages_up_per_worker"][-1] == 2 * 12 // 3
    assert dcgd["messages_up_per_worker"][-1] == 12 and dcgd["label"] == "dcgd[identity]"
    assert dsgd["consensus"][1] > 0 and dcgd["consensus"][-1] == 0


def test_gossip_link_time_model():
    """With a link, a gossip step costs latency + 8 d_max P / bandwidth (each node pushes its
    d_max messages through its own link, all nodes in parallel); local steps cost nothing."""
    p = _quad()
    link = Link(bandwidth=1e6, latency=1e-3)
    h = simulate(from_spec("dsgd", "identity", graph="exp", local_steps=2, backend="torch"),
                 p.grad_fns, p.x0, steps=4, lr=0.1, link=link)
    per_round = 1e-3 + 8 * 2 * 48 / 1e6  # n = 3: offsets 1, 2; 12 fp32 values = 48 bytes
    np.testing.assert_allclose(np.diff(h.time), [0, per_round, 0, per_round], rtol=1e-12)
