"""End to end on a slow link: ``gradpack train`` with its ranks in network namespaces
joined by veth links shaped with ``tc`` (default 1 Gbit/s each way per host), against the
same runs on plain loopback.

Topology: one Linux bridge in the root namespace; rank i lives in namespace ``gpns<i>``
behind a veth pair whose two ends each get a token-bucket filter at ``--rate``, so every
host has a ``--rate`` uplink and downlink, like a NIC. The ranks run as ``torchrun`` would
start them (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the environment, gloo bound to the
veth with ``GLOO_SOCKET_IFNAME``), one thread each.

For every link the script trains the uncompressed baseline (``dcgd`` + ``identity``: exact
minibatch SGD over an fp32 all-gather), EF21-SGDM + Top-K 1% and EF14 + sign on the
communication-bound digits MLP (``--model mlp``, 4.3M parameters), and reports the
training-clock time each takes to reach the baseline's final test accuracy.

Beside them, in the same run, the comparison users make: PyTorch's own DDP comm hooks
(``fp16_compress_hook``, ``bf16_compress_hook``, ``powerSGD_hook`` at rank 1 and 4) on the
same model, initialisation, minibatches, optimizer and evaluation, one rank per namespace
(``python -m gradpack.bench.slow_link --torch-hook-worker SPEC``). PowerSGD runs with one
DDP bucket (it issues an all-reduce inside a Future callback and deadlocks on gloo with two
or more) and ``start_powerSGD_iter=2``, its smallest (the first two steps are plain fp32
all-reduces). Their
bits per worker are what each all-reduce carries (16 per element for fp16/bf16; PowerSGD's
``P`` and ``Q`` factors and its uncompressed vectors at 32, from its own
``compression_stats``); their encode/decode time is the hook body's (the compression and
issuing the collective; decompression runs in PyTorch's callbacks, inside "comm").

Needs root, ``ip`` and ``tc`` (iproute2); otherwise it says so and exits with status 0
without running anything. Run it as::

    sudo python -m gradpack.bench.slow_link              # writes bench/results/slow_link.*
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SUBNET = "10.213.0"
BRIDGE = "gpbr0"
RUNS = [  # label, algorithm, compressor, hparams, steps factor (compressed runs may need more)
    ("baseline (dcgd + identity)", "dcgd", "identity", [], 1),
    ("EF21-SGDM + Top-K 1%", "ef21-sgdm", "topk:0.01", ["eta=0.1"], 2),
    ("EF14 + sign", "ef14", "sign", [], 2),
    # PyTorch's own hooks: algorithm "torch", the hook spec as the compressor
    ("PyTorch fp16_compress_hook", "torch", "fp16", [], 1),
    ("PyTorch bf16_compress_hook", "torch", "bf16", [], 1),
    ("PyTorch powerSGD_hook rank 1", "torch", "powersgd:1", [], 2),
    ("PyTorch powerSGD_hook rank 4", "torch", "powersgd:4", [], 2),
]
TORCH_HOOKS = ("fp16", "bf16", "powersgd:R")


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (iproute2)"
    return None


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def shaped_namespaces(n: int, rate: str):
    """``n`` namespaces on one bridge, every veth end shaped to ``rate``; torn down on exit."""
    made = []
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        made.append(("link", BRIDGE))
        sh("ip", "link", "set", BRIDGE, "up")
        for i in range(n):
            ns, host, peer = f"gpns{i}", f"gpv{i}h", f"gpv{i}n"
            sh("ip", "netns", "add", ns)
            made.append(("netns", ns))
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            made.append(("link", host))
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "link", "set", host, "master", BRIDGE)
            sh("ip", "link", "set", host, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", peer)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            tbf = ["tbf", "rate", rate, "burst", "256kb", "latency", "50ms"]
            sh("tc", "qdisc", "add", "dev", host, "root", *tbf)  # into the host
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer, "root", *tbf)  # out
        yield [(f"gpns{i}", f"gpv{i}n", f"{SUBNET}.{i + 1}") for i in range(n)]
    finally:
        for kind, name in reversed(made):
            cmd = ("ip", "link", "del", name) if kind == "link" else ("ip", "netns", "del", name)
            subprocess.run(cmd, capture_output=True)


def train(places, run, args, out_dir: Path) -> dict:
    """One ``gradpack train`` run, rank i started in ``places[i]``; returns its run.json."""
    label, algorithm, compressor, hparams, factor = run
    n = len(places)
    if algorithm == "torch":
        cmd = [sys.executable, "-m", "gradpack.bench.slow_link", "--torch-hook-worker",
               compressor, "--steps", str(args.steps * factor), "--seed", str(args.seed),
               "--eval-every", str(args.eval_every), "--out", str(out_dir)]
    else:
        cmd = [sys.executable, "-m", "gradpack", "train", "--model", "mlp", "--algorithm",
               algorithm, "--compressor", compressor, "--steps", str(args.steps * factor),
               "--no-baseline", "--seed", str(args.seed), "--eval-every",
               str(args.eval_every), "--out", str(out_dir), "--timeout", "300"]
    for h in hparams:
        cmd += ["--hparam", h]
    master = places[0][2]
    procs = []
    for rank, (ns, ifname, _) in enumerate(places):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(n),
               "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": master, "MASTER_PORT": str(args.port),
               "GLOO_SOCKET_IFNAME": ifname, "OMP_NUM_THREADS": "1"}
        prefix = ["ip", "netns", "exec", ns] if ns else []
        log = open(out_dir / f"rank{rank}.log", "w")  # closed after the wait below
        procs.append((subprocess.Popen(prefix + cmd, env=env, stdout=log, stderr=subprocess.STDOUT),
                      log))
    failed = []
    for rank, (p, log) in enumerate(procs):
        if p.wait() != 0:
            failed.append(rank)
        log.close()
    if failed:
        tail = (out_dir / f"rank{failed[0]}.log").read_text()[-2000:]
        raise RuntimeError(f"slow_link: {label}: ranks {failed} failed:\n{tail}")
    return json.loads((out_dir / "run.json").read_text())["runs"]["compressed"]


def time_to(evals: list[dict], target: float) -> float | None:
    """Training-clock seconds at the first evaluation reaching ``target`` accuracy."""
    for e in evals:
        if e["test_accuracy"] >= target - 1e-9:
            return e["time_s"]
    return None


def compare(link: str, places, args, work: Path) -> list[dict]:
    results = []
    chosen = range(len(RUNS)) if args.runs == "all" else \
        sorted({0} | {int(i) for i in args.runs.split(",")})
    for i in chosen:
        run = RUNS[i]
        out = work / f"{link.split()[0]}-{i}"
        out.mkdir(parents=True)
        print(f"[{link}] {run[0]} ...", flush=True)
        results.append((run, train(places, run, args, out)))
        args.port += 1
    target = results[0][1]["evals"][-1]["test_accuracy"]
    base_t = time_to(results[0][1]["evals"], target)
    rows = []
    for run, res in results:
        t = time_to(res["evals"], target)
        rows.append({
            "link": link, "run": run[0], "algorithm": run[1], "compressor": run[2],
            "workers": len(places), "steps": len(res["losses"]), "params": res["params"],
            "target_accuracy": target, "time_to_target_s": t,
            "ratio_to_baseline": None if t is None or base_t is None else t / base_t,
            "final_accuracy": res["evals"][-1]["test_accuracy"],
            "wall_s": res["wall_s"], "s_per_step": res["wall_s"] / len(res["losses"]),
            "comm_s": res["comm_s"], "encode_decode_s": res["encode_s"] + res["decode_s"],
            "bits_up_per_worker": res["bits_up"],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| link | run | time to target (s) | vs baseline | s/step | comm (s) | "
             "encode+decode (s) | final acc. | bits up/worker |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        ratio = "—" if r["ratio_to_baseline"] is None else f"{r['ratio_to_baseline']:.2f}x"
        lines.append(f"| {r['link']} | {r['run']} | {t} | {ratio} | {r['s_per_step']:.3f} | "
                     f"{r['comm_s']:.1f} | {r['encode_decode_s']:.1f} | "
                     f"{r['final_accuracy']:.4f} | {r['bits_up_per_worker'] / 1e6:.1f} Mbit |")
    return "\n".join(lines)


def _torch_hook(spec: str, world: int):
    """``(state, hook, bucket_cap_mb, bits_of)`` for one of PyTorch's DDP comm hooks;
    ``bits_of(steps, numel)`` is the bits one worker handed to the all-reduces."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if spec in ("fp16", "bf16"):
        fn = getattr(default_hooks, f"{spec}_compress_hook")
        return dist.group.WORLD, fn, 25.0, lambda steps, numel: 16 * numel * steps
    if spec.startswith("powersgd:"):
        rank = int(spec.split(":")[1])
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                            start_powerSGD_iter=2)

        def bits_of(steps, numel):  # steps 0, 1: plain fp32 all-reduce; then P, Q, vectors
            _, _, after = state.compression_stats()
            return 32 * numel * min(steps, state.start_powerSGD_iter) + 32 * int(after)

        # one bucket: PowerSGD's all-reduce inside a Future callback deadlocks gloo at two
        return state, powerSGD_hook.powerSGD_hook, 1e6, bits_of
    raise ValueError(f"unknown PyTorch hook {spec!r}; known: {', '.join(TORCH_HOOKS)}")


def torch_hook_worker(spec: str, args) -> int:
    """One rank (``torchrun`` environment) of the digits MLP under PyTorch hook ``spec``;
    rank 0 writes ``run.json`` in the shape ``gradpack train`` writes it."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradpack.train import worker as train_worker  # gradpack train's model, data, loop

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = train_worker.TrainConfig(model="mlp", workers=world, steps=args.steps,
                                   seed=args.seed, eval_every=args.eval_every, baseline=False)
    task = train_worker.Task(cfg, rank, world, torch.device("cpu"))
    model = task.model()
    state, fn, cap, bits_of = _torch_hook(spec, world)
    ddp = DDP(model, bucket_cap_mb=cap)
    timing = {"encode_s": 0.0, "comm_s": 0.0}

    def timed(st, bucket):
        t0 = time.perf_counter()
        fut = fn(st, bucket)
        t1 = time.perf_counter()
        timing["encode_s"] += t1 - t0

        def done(f):
            timing["comm_s"] += time.perf_counter() - t1
            return f.value()

        return fut.then(done)

    ddp.register_comm_hook(state, timed)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=cfg.momentum)

    def step(x, y) -> float:
        loss = task.loss(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    losses, evals, t0 = train_worker.run_steps(task, model, step)
    wall = time.perf_counter() - t0
    numel = sum(p.numel() for p in model.parameters())
    result = {"label": f"torch:{spec}", "losses": losses, "evals": evals, "params": numel,
              "bits_up": bits_of(cfg.steps, numel), "wall_s": wall,  # as gradpack train's
              "encode_s": timing["encode_s"], "decode_s": 0.0, "comm_s": timing["comm_s"]}
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({"runs": {"compressed": result}}))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rate", default="1gbit", help="tc rate of every link (default 1gbit)")
    p.add_argument("--steps", type=int, default=300, help="baseline steps (compressed: 2x)")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=29610)
    p.add_argument("--links", default="shaped,loopback", help="shaped, loopback or both")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--runs", default="all",
                   help="comma-separated row numbers of RUNS to run (default all; 0 is the "
                        "baseline and always runs)")
    p.add_argument("--torch-hook-worker", metavar="SPEC",
                   help="internal: run one rank of a PyTorch-hook row (torchrun environment)")
    args = p.parse_args(argv)
    if args.torch_hook_worker:
        return torch_hook_worker(args.torch_hook_worker, args)
    why = missing_requirements()
    if why:
        print(f"slow_link: skipped: {why}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="gradpack-slowlink-") as tmp:
        work = Path(tmp)
        links = args.links.split(",")
        if "shaped" in links:
            with shaped_namespaces(args.workers, args.rate) as places:
                rows += compare(f"{args.rate} veth", places, args, work)
        if "loopback" in links:
            places = [("", "lo", "127.0.0.1")] * args.workers
            rows += compare("loopback", places, args, work)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "slow_link.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "timestamp": stamp}) + "\n")
    table = markdown(rows)
    (out / "slow_link.md").write_text(f"Run {stamp}, {args.workers} ranks on "
                                      f"{os.cpu_count()} CPU cores.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"slow_link: {time.perf_counter() - started:.0f} s")
    sys.exit(code)
