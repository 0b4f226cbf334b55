"""The kernel benchmark: every compressor's encode, decode-and-sum of n payloads and fused
error-feedback steps (EF21, EF14), each beside the copy roofline and its baseline,
all measured in one run on one device. Each row's note says what the checks cost: the
op's time minus the same op's with ``check_finite=False`` (input finite check, payload
header and value checks, and their host reads)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from gradpack.compressors import from_spec, names
from gradpack.kernels import philox_torch
from gradpack.kernels.backend import resolve
from gradpack.kernels.fusion import Fusion

from . import results
from .alloc import describe
from .baselines import EF14_LR, baseline
from .roofline import OPS, copy_gbps, op_bytes
from .timing import timed

FUSIONS = {
    "ef21": Fusion(residual="sub", update="add"),
    "ef14": Fusion(residual="error", gamma=EF14_LR, update="error"),
}
#: specs benchmarked for each registered family; a family not listed runs as its bare name
SPECS = {
    "qsgd": ["qsgd:4"],  # 4-bit codes: sign + 3 level bits
    "topk": ["topk:0.01", "topk:0.01:approx"],
    "randk": ["randk:0.01"],
}
PHILOX_FAMILIES = ("ssign", "qsgd", "randk")


def default_specs() -> list[str]:
    return [spec for family in names() for spec in SPECS.get(family, [family])]


class Run:
    """Rows of one invocation; prints each as it is measured."""

    def __init__(self, device, backend, repeats, max_op_s, log: Callable[[str], None]):
        self.device, self.backend, self.repeats = device, backend, repeats
        self.max_op_s, self.log = max_op_s, log
        self.rows: list[dict] = []
        self.common = dict(
            run=results.now(), backend=backend, device=str(device),
            device_name=results.device_name(device), version=results.version(),
        )
        self._last: dict[tuple[str, str], tuple[int, float]] = {}
        self.copy_s: dict[int, float] = {}  # the copy roofline's time, per size
        self.first_s: float | None = None  # the last timed op's first call

    def time(self, fn) -> float:
        seconds, self.first_s = timed(fn, self.device, repeats=self.repeats)
        return seconds

    def too_slow(self, key, d) -> float | None:
        """Estimated seconds when the previous size's time, scaled to ``d``, exceeds the budget."""
        prev = self._last.get(key)
        if self.max_op_s <= 0 or prev is None:
            return None
        estimate = prev[1] * d / prev[0]
        return estimate if estimate > self.max_op_s else None

    def add(self, op, spec, d, seconds, nbytes, copy, base=(None, None), note="", first=None):
        self._last[(op, spec)] = (d, seconds)
        gbps = nbytes / seconds / 1e9
        base_name, base_s = base
        copy_s = self.copy_s.get(d)
        r = results.row(
            **self.common, op=op, spec=spec, size=d, time_s=seconds, gbps=gbps,
            pct_of_copy=100 * gbps / copy, copy_ratio=seconds / copy_s if copy_s else None,
            first_call_s=first, baseline=base_name, baseline_time_s=base_s,
            baseline_ratio=base_s / seconds if base_s else None, timestamp=results.now(),
            note=note,
        )
        self.rows.append(r)
        ratio = f"  {r['baseline_ratio']:.2f}x {base_name}" if base_s else ""
        self.log(f"{d:>11,} {spec:<18} {op:<10} {seconds * 1e3:10.2f} ms {gbps:7.2f} GB/s "
                 f"{r['pct_of_copy']:6.1f}% of copy{ratio}{'  ' + note if note else ''}")


def bench_spec(run: Run, spec: str, x: torch.Tensor, copy: float, n: int, ops=OPS) -> None:
    d = x.numel()
    c = from_spec(spec, backend=run.backend)
    unchecked = from_spec(spec, backend=run.backend, check_finite=False)
    payload = c.encode(x, seed=0)
    P = payload.numel()
    payloads = torch.stack([c.encode(x * (i + 1), seed=i) for i in range(n)])
    seeds = list(range(n))
    out = torch.empty(d, device=x.device)
    for op in ops:
        est = run.too_slow((op, spec), d)
        if est is not None:
            run.log(f"{d:>11,} {spec:<18} {op:<10} skipped: ~{est:.0f} s > --max-op-s")
            continue
        h = torch.zeros(d, device=x.device)
        try:
            seconds = run.time(_op(c, op, x, payload, payloads, seeds, out, h))
        except (ValueError, NotImplementedError) as e:
            run.log(f"{d:>11,} {spec:<18} {op:<10} not supported: {e}")
            continue
        first = run.first_s
        fn = _op(c, op, x, payload, payloads, seeds, out, h)
        checks = seconds - run.time(_op(unchecked, op, x, payload, payloads, seeds, out, h))
        decode_each = lambda: [c.decode(payloads[i], d, seed=i) for i in seeds]  # noqa: E731
        base_name, base_fn = baseline(op, spec, x, {"h": h.zero_()}, decode_each)
        base_s = run.time(base_fn) if base_fn else None
        note = f"checks {1e3 * checks:+.3f} ms ({100 * checks / seconds:+.0f}%)"
        if op == "decode_sum":
            note = f"{describe(fn, base_fn, d, n, x.device)}; {note}"
        run.add(op, spec, d, seconds, op_bytes(op, d, P, n), copy, (base_name, base_s), note,
                first)


def _op(c, op: str, x, payload, payloads, seeds, out, h) -> Callable[[], object]:
    """One call of ``op`` with ``c``, writing into the given buffers."""
    if op == "encode":
        return lambda: c.encode(x, seed=0, out=payload)
    if op == "decode_sum":
        return lambda: c.decode_sum(payloads, x.numel(), seeds=seeds, out=out)
    return lambda: c.step(FUSIONS[op], x, {"h": h}, seed=0, out=payload)


def bench_philox(run: Run, d: int, copy: float) -> None:
    """The element stream's uniforms alone (what bounds ssign/qsgd/randk), on the
    backend the compressors resolve to: the native kernel or the torch twin."""
    backend = resolve(run.backend, run.device)
    if backend == "triton" or run.too_slow(("philox.rand", ""), d) is not None:
        return
    if backend == "cpu":
        import numpy as np

        from gradpack.kernels import philox_cpu

        buf = np.empty(d, dtype=np.float32)
        fn = lambda: philox_cpu.uniforms(0, 0, d, buf)  # noqa: E731
    else:
        fn = lambda: philox_torch.uniforms(0, 0, d, run.device)  # noqa: E731
    s = run.time(fn)
    run.add("philox.rand", "", d, s, 4 * d, copy, first=run.first_s,
            note=f"{backend}: the element stream alone (bounds ssign/qsgd/randk)")


def bench(
    sizes: Iterable[int],
    specs: list[str],
    *,
    device: torch.device,
    backend: str = "auto",
    ops: Iterable[str] = OPS,
    repeats: int = 5,
    n: int = 4,
    max_op_s: float = 0.0,
    log: Callable[[str], None] = print,
) -> list[dict]:
    run = Run(device, backend, repeats, max_op_s, log)
    gen = torch.Generator(device=device).manual_seed(0)
    for d in sizes:
        x = torch.randn(d, generator=gen, device=device)
        copy_s, copy = copy_gbps(x, repeats=repeats)
        run.copy_s[d] = copy_s
        run.add("copy", "", d, copy_s, 8 * d, copy, note="roofline: dst.copy_(x), fp32")
        if any(s.split(":")[0] in PHILOX_FAMILIES for s in specs):
            bench_philox(run, d, copy)
        for spec in specs:
            bench_spec(run, spec, x, copy, n, tuple(ops))
    return run.rows
