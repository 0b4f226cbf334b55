"""Timing of the native CPU (numba) elementwise kernels against ``dst.copy_(x)`` and the
torch twin, at d = 10M fp32 (a plain script: ``python bench/native_elementwise_timing.py
[d] [--no-torch]``). Prints best-of-5 times and ratios to the copy measured in the same
process with the same threads; the lead folds these into the real bench."""

from __future__ import annotations

import sys
import time

import torch

from gradpack.compressors import from_spec
from gradpack.kernels import elementwise as ew
from gradpack.kernels import elementwise_cpu
from gradpack.kernels.fusion import Fusion

PLAIN = Fusion()
EF21 = Fusion(residual="sub", update="add")
EF14 = Fusion(residual="error", gamma=0.1, update="error")
TARGETS = {  # issue 10's targets, ratio to the copy
    "sign encode": 1.5, "sign EF21 step": 2.5, "sign EF14 step": 2.5, "ssign encode": 4.0,
    "qsgd:4 encode": 3.5, "qsgd:4 EF21 step": 4.5, "decode_sum 4x sign": 2.0,
    "decode_sum 4x qsgd:4": 3.0,
}


def best(fn, reps: int = 5) -> float:
    fn()  # warm-up (compiles, or loads the cache)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cases(d: int):
    x = torch.randn(d)
    for name, spec, fusion in [("sign encode", "sign", PLAIN), ("sign EF21 step", "sign", EF21),
                               ("sign EF14 step", "sign", EF14), ("ssign encode", "ssign", PLAIN),
                               ("qsgd:4 encode", "qsgd:4", PLAIN),
                               ("qsgd:4 EF21 step", "qsgd:4", EF21)]:
        c = from_spec(spec)
        fmt = c.format(d)
        payload = torch.zeros(c.payload_bytes(d), dtype=torch.uint8)
        state = {k: torch.randn(d) for k in fusion.state_names()}

        def native(fmt=fmt, fusion=fusion, state=state, payload=payload):
            elementwise_cpu.encode(fmt, fusion, x, state, 1, payload)

        def twin(fmt=fmt, fusion=fusion, state=state, payload=payload):
            ew.encode(fmt, fusion, x, state, 1, payload, "torch")

        yield name, native, twin
    for spec in ("sign", "qsgd:4"):
        c = from_spec(spec)
        fmt = c.format(d)
        payloads = torch.stack([c.encode(torch.randn(d), seed=s) for s in range(4)])
        out = torch.empty(d)

        def native(fmt=fmt, payloads=payloads, out=out):
            elementwise_cpu.decode_sum(fmt, payloads, d, out, 0.25, False)

        def twin(fmt=fmt, payloads=payloads, out=out):
            ew.decode_sum(fmt, payloads, d, out, 0.25, False, "torch")

        yield f"decode_sum 4x {spec}", native, twin


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    d = int(args[0]) if args else 10_000_000
    with_twin = "--no-torch" not in sys.argv
    src, dst = torch.randn(d), torch.empty(d)
    copy = best(lambda: dst.copy_(src))
    print(f"d = {d}, threads = {torch.get_num_threads()}, copy {copy * 1e3:.2f} ms "
          f"({8 * d / copy / 1e9:.1f} GB/s read+write)")
    print(f"{'op':24s} {'native ms':>10s} {'x copy':>7s} {'target':>7s} {'torch ms':>9s} "
          f"{'x copy':>7s}")
    for name, native, twin in cases(d):
        t = best(native)
        line = f"{name:24s} {t * 1e3:10.2f} {t / copy:7.2f} {TARGETS[name]:7.1f}"
        if with_twin:
            tt = best(twin, reps=2)
            line += f" {tt * 1e3:9.1f} {tt / copy:7.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
