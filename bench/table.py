"""Markdown table of the latest run in a results file, and the issue's CPU targets checked
against it."""

from __future__ import annotations

TARGET_SIZE = 10**7
#: issue 10's targets (label, spec, ops, field, bound, "max"/"min"): met when every listed
#: op's field is within the bound; copy_ratio is op time / copy time of the same run
CPU_TARGETS = (
    ("sign encode <= 1.5x copy", "sign", ("encode",), "copy_ratio", 1.5, "max"),
    ("sign fused EF21 / EF14 step <= 2.5x copy", "sign", ("ef21", "ef14"), "copy_ratio", 2.5,
     "max"),
    ("ssign encode <= 4x copy", "ssign", ("encode",), "copy_ratio", 4.0, "max"),
    ("qsgd:4 encode <= 3.5x copy", "qsgd:4", ("encode",), "copy_ratio", 3.5, "max"),
    ("qsgd:4 fused EF21 step <= 4.5x copy", "qsgd:4", ("ef21",), "copy_ratio", 4.5, "max"),
    ("Philox rand (10M draws) <= 2.5x copy", "", ("philox.rand",), "copy_ratio", 2.5, "max"),
    ("decode-and-sum of 4 sign payloads <= 2x copy", "sign", ("decode_sum",), "copy_ratio",
     2.0, "max"),
    ("decode-and-sum of 4 qsgd:4 payloads <= 3x copy", "qsgd:4", ("decode_sum",),
     "copy_ratio", 3.0, "max"),
    ("exact Top-K 1% >= 15x torch.topk", "topk:0.01", ("encode",), "baseline_ratio", 15.0,
     "min"),
    ("threshold Top-K 1% >= 20x torch.topk", "topk:0.01:approx", ("encode",),
     "baseline_ratio", 20.0, "min"),
    ("Random-K 1% >= 50x randperm", "randk:0.01", ("encode",), "baseline_ratio", 50.0, "min"),
)


def latest(rows: list[dict]) -> list[dict]:
    """The newest row of each (device, backend, size, spec, op), in order of measurement.

    Each row's ratios are to the copy and baseline of its own run, so rows of different
    runs can stand in one table."""
    newest: dict[tuple, dict] = {}
    for r in rows:
        key = (r["device_name"], r["backend"], r["size"], r["spec"], r["op"])
        if key not in newest or r["run"] >= newest[key]["run"]:
            newest[key] = r
    return sorted(newest.values(), key=lambda r: (r["device_name"], r["size"], r["run"]))


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[dict], *, size: int = TARGET_SIZE) -> str:
    rows = latest(rows)
    if not rows:
        return "(no results)"
    devices = sorted({f"{r['device_name']} ({r['device']}, backend {r['backend']})" for r in rows})
    runs = sorted({f"{r['run']} (gradpack {r['version']})" for r in rows})
    lines = [
        f"Device: {'; '.join(devices)}. Runs: {', '.join(runs)}.",
        "",
        "| size | spec | op | time (ms) | × copy | GB/s | % of copy | first call (ms) "
        "| baseline | × baseline | note |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        first = r.get("first_call_s")
        lines.append(
            f"| {r['size']:,} | {r['spec'] or ''} | {r['op']} | {_num(r['time_s'] * 1e3, '.2f')} "
            f"| {_num(r.get('copy_ratio'), '.2f')} | {_num(r['gbps'], '.2f')} "
            f"| {_num(r['pct_of_copy'], '.1f')} | {_num(first and first * 1e3, '.0f')} "
            f"| {r['baseline'] or ''} | {_num(r['baseline_ratio'], '.2f')} | {r['note'] or ''} |"
        )
    lines += ["", *targets(rows, size=size)]
    return "\n".join(lines)


def targets(rows: list[dict], *, size: int = TARGET_SIZE) -> list[str]:
    """One line per CPU target at ``size``: met, missed, or not measured."""
    out = [f"CPU targets at d = {size:,}:", ""]
    for label, spec, ops, field, bound, kind in CPU_TARGETS:
        found = [r for r in rows if (r["spec"] or "") == spec and r["op"] in ops
                 and r["size"] == size]
        values = [r.get(field) for r in found if r.get(field) is not None]
        if len(values) < len(ops):
            out.append(f"- {label}: not measured")
            continue
        worst = max(values) if kind == "max" else min(values)
        met = worst <= bound if kind == "max" else worst >= bound
        out.append(f"- {label}: {'met' if met else 'MISSED'} (worst {worst:.2f}x)")
    return out
