"""The plain-PyTorch model averager: called after ``optimizer.step()`` (and ``pre_step()``
before it, for SCAFFOLD and gradient tracking) on 4 gloo ranks it gives the simulator's
iterates bit for bit, and its state survives a checkpoint."""

import io
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gradpack.algorithms import from_spec
from gradpack.averaging import ModelAverager
from gradpack.comm.distributed import exit_worker
from gradpack.sim.core import simulate
from gradpack.sim.problems import quadratic

WORLD, STEPS, D = 4, 6, 24
CASES = [("dsgd", "identity", {"graph": "one-peer-exp"}),
         ("local-sgd", "topk:0.25", {"local_steps": 2}),
         ("choco-sgd", "sign", {"graph": "exp", "gamma": 0.5}),
         ("scaffold", "qsgd:3:8", {"local_steps": 2}),
         ("gradient-tracking", "identity", {"graph": "ring"})]


def _problem():
    return quadratic(n=WORLD, d=D, mu=0.2, sigma=0.1, seed=5)


def _train(rank, name, spec, hp, p, lr):
    x = torch.nn.Parameter(p.x0.float().clone())
    opt = torch.optim.SGD([x], lr=lr)
    avg = ModelAverager([x], name, spec, backend="torch", seed=7, **hp)
    for k in range(STEPS):
        x.grad = p.grad_fns[rank](x.detach(), k).float()
        avg.pre_step()
        opt.step()
        avg.step()
    avg.ledger.check()
    return x.detach().clone(), int(avg.ledger.totals()["bits_up"][rank])


def _worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        p = _problem()
        res = {c: _train(rank, *CASES[c], p, 0.5 / p.L) for c in range(len(CASES))}
        x = torch.nn.Parameter(torch.zeros(4))
        try:
            ModelAverager([x], "dsgd", graph="exp" if rank else "ring")
            res["mismatch"] = None
        except ValueError as err:
            res["mismatch"] = str(err)
        torch.save(res, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_worker()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_averager_after_optimizer_step_gives_the_simulator_iterates(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    p = _problem()
    for c, (name, spec, hp) in enumerate(CASES):
        alg = from_spec(name, spec, backend="torch", seed=7, **hp)
        h = simulate(alg, p.grad_fns, p.x0.float(), steps=STEPS, lr=0.5 / p.L, seed=7)
        for r in range(WORLD):
            x, bits = ranks[r][c]
            assert torch.equal(x, h.extra["workers_x"][r]), (name, r)
            assert bits == h.bits_up[-1, r]
    for r in range(WORLD):
        assert "graph" in ranks[r]["mismatch"]


def test_state_dict_round_trip_and_resume():
    """One process (nothing to average with): the state dict is tensors and plain values
    (weights_only load), and a resumed averager continues bit-identically."""
    torch.manual_seed(0)

    def run(split):
        m = torch.nn.Linear(5, 3)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        avg = ModelAverager(m, "choco-sgd", "topk:0.5", graph="ring", gamma=0.5,
                            backend="torch")
        data = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
        for k in range(10):
            if k == split:
                buf = io.BytesIO()
                torch.save({"avg": avg.state_dict(), "model": m.state_dict()}, buf)
                buf.seek(0)
                sd = torch.load(buf, weights_only=True)
                m = torch.nn.Linear(5, 3)
                m.load_state_dict(sd["model"])
                opt = torch.optim.SGD(m.parameters(), lr=0.1)
                avg = ModelAverager(m, "choco-sgd", "topk:0.5", graph="ring", gamma=0.5,
                                    backend="torch")
                avg.load_state_dict(sd["avg"])
            opt.zero_grad()
            m(data[k:k + 1]).square().sum().backward()
            opt.step()
            avg.step()
        return torch.cat([q.detach().reshape(-1) for q in m.parameters()])

    torch.manual_seed(0)
    a = run(split=-1)
    torch.manual_seed(0)
    b = run(split=4)
    assert torch.equal(a, b)


def test_averager_errors():
    x = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="gradient method"):
        ModelAverager([x], "ef21", "topk:0.5")
    avg = ModelAverager([x], "scaffold")
    with pytest.raises(ValueError, match="pre_step"):
        avg.step()
    with pytest.raises(ValueError, match="after backward"):
        avg.pre_step()
    with pytest.raises(ValueError, match="float32"):
        ModelAverager([torch.nn.Parameter(torch.zeros(4, dtype=torch.float16))], "dsgd")
    avg = ModelAverager([x], "dsgd")
    with pytest.raises(ValueError, match="checkpoint is for"):
        avg.load_state_dict(ModelAverager([x], "local-sgd").state_dict())


@pytest.mark.parametrize("name", ["local-sgd", "scaffold", "dsgd", "gradient-tracking"])
def test_ddp_hook_points_model_averaging_algorithms_to_the_averager(name):
    import gradpack
    from gradpack.algorithms import from_spec as algorithm
    from gradpack.compressors import from_spec as compressor

    kw = {"graph": "ring"} if name in ("dsgd", "gradient-tracking") else {}
    with pytest.raises(ValueError, match="ModelAverager"):
        gradpack.ddp.hook(algorithm(name, compressor("identity"), **kw))
