"""Timing of the native CPU (numba) sparsifiers at d = 10M fp32, 1% (a plain script:
``python bench/native_sparse_timing.py [d] [--no-torch]``).

Prints best-of-5 times of Top-K exact / threshold and Random-K encode, against the baselines
of issue 10 measured in the same process with the same threads (``x[torch.topk(x.abs(),
K).indices]``, ``x[torch.randperm(d)[:K]]``), the torch twin's times, a fused EF21 step and
decode-and-sum of 4 payloads, and each case's first call (compile, or cache load: run with
an empty ``NUMBA_CACHE_DIR`` to see the compile). The lead folds these into the real bench.
"""

from __future__ import annotations

import sys
import time

import torch

from gradpack.compressors import from_spec
from gradpack.kernels import randk as kr
from gradpack.kernels import randk_cpu, topk_cpu
from gradpack.kernels import topk as kt
from gradpack.kernels.fusion import Fusion

PLAIN = Fusion()
EF21 = Fusion(residual="sub", update="add")
TARGETS = {"topk exact": 15.0, "topk approx": 20.0, "randk": 50.0}  # x faster than baseline


def best(fn, reps: int = 5) -> tuple[float, float]:
    """``(best, first)``: the best of ``reps`` timed calls after the first (warm-up) call."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), first


def cases(d: int, ratio: str):
    """``(name, baseline name, native, twin)``."""
    x = torch.randn(d)
    tk = from_spec(f"topk:{ratio}")
    k = tk.k(d)
    for approx in (False, True):
        for fusion in (PLAIN, EF21):
            payload = torch.zeros(tk.payload_bytes(d), dtype=torch.uint8)
            state = {n: torch.randn(d) for n in fusion.state_names()}
            scratch_n, scratch_t = {}, {}

            def native(approx=approx, fusion=fusion, state=state, payload=payload, s=scratch_n):
                topk_cpu.encode(approx, k, fusion, x, state, payload, s)

            def twin(approx=approx, fusion=fusion, state=state, payload=payload, s=scratch_t):
                kt.encode(approx, k, fusion, x, state, payload, "torch", s)

            name = f"topk {'approx' if approx else 'exact'}" + (" EF21" if fusion != PLAIN else "")
            yield name, "topk", native, twin
    rows = torch.stack([tk.encode(torch.randn(d)) for _ in range(4)])
    out = torch.empty(d)
    yield ("topk decode_sum 4x", None,
           lambda: topk_cpu.decode_sum(k, rows, d, out, 0.25, False),
           lambda: kt.decode_sum(k, rows, d, out, 0.25, False, "torch"))

    rk = from_spec(f"randk:{ratio}")
    for fusion in (PLAIN, EF21):
        payload = torch.zeros(rk.payload_bytes(d), dtype=torch.uint8)
        state = {n: torch.randn(d) for n in fusion.state_names()}

        def native(fusion=fusion, state=state, payload=payload):
            randk_cpu.encode(True, k, fusion, x, state, 1, payload)

        def twin(fusion=fusion, state=state, payload=payload):
            kr.encode(True, k, fusion, x, state, 1, payload, "torch")

        yield "randk" + (" EF21" if fusion != PLAIN else ""), "randk", native, twin
    seeds = [1, 2, 3, 4]
    rows = torch.stack([rk.encode(torch.randn(d), seed=s) for s in seeds])
    yield ("randk decode_sum 4x", None,
           lambda: randk_cpu.decode_sum(k, rows, d, seeds, out, 0.25, False),
           lambda: kr.decode_sum(k, rows, d, seeds, out, 0.25, False, "torch"))


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    d = int(args[0]) if args else 10_000_000
    with_twin = "--no-torch" not in sys.argv
    ratio = "0.01"
    k = from_spec(f"topk:{ratio}").k(d)
    x = torch.randn(d)
    base = {"topk": best(lambda: x[torch.topk(x.abs(), k).indices])[0],
            "randk": best(lambda: x[torch.randperm(d)[:k]])[0]}
    src, dst = torch.randn(d), torch.empty(d)
    copy = best(lambda: dst.copy_(src))[0]
    print(f"d = {d}, K = {k}, threads = {torch.get_num_threads()}; copy {copy * 1e3:.2f} ms, "
          f"torch.topk + gather {base['topk'] * 1e3:.1f} ms, randperm + gather "
          f"{base['randk'] * 1e3:.1f} ms (shared machine: noisy)")
    print(f"{'op':22s} {'native ms':>10s} {'first s':>8s} {'x faster':>9s} {'target':>7s} "
          f"{'torch ms':>9s} {'x faster':>9s}")
    for name, against, native, twin in cases(d, ratio):
        t, first = best(native)
        tt = best(twin)[0] if with_twin else float("nan")
        b = base.get(against)
        faster = f"{b / t:9.1f}" if b else f"{'':9s}"
        faster_t = f"{b / tt:9.1f}" if b else f"{tt / t:8.1f}n"
        target = TARGETS.get(name)
        print(f"{name:22s} {t * 1e3:10.2f} {first:8.2f} {faster} "
              f"{target if target else '':>7} {tt * 1e3:9.1f} {faster_t}")


if __name__ == "__main__":
    main()
