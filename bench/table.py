"""Markdown table of the latest run in a results file, and the issue's CPU targets checked
against it."""

from __future__ import annotations

TARGET_SIZE = 10**7
#: (label, spec, ops, field, threshold): met when every listed op's field >= threshold
CPU_TARGETS = (
    ("fused sign + EF >= 50% of copy", "sign", ("ef21", "ef14"), "pct_of_copy", 50.0),
    ("QSGD 4-bit >= 30% of copy", "qsgd:7", ("encode",), "pct_of_copy", 30.0),
    ("exact Top-K 1% >= 3x torch.topk", "topk:0.01", ("encode",), "baseline_ratio", 3.0),
    ("threshold Top-K 1% >= 6x torch.topk", "topk:0.01:approx", ("encode",),
     "baseline_ratio", 6.0),
    ("Random-K 1% >= 20x randperm", "randk:0.01", ("encode",), "baseline_ratio", 20.0),
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
        "| size | spec | op | time (ms) | GB/s | % of copy | baseline | × baseline | note |",
        "|---:|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {r['spec'] or ''} | {r['op']} | {_num(r['time_s'] * 1e3, '.2f')} "
            f"| {_num(r['gbps'], '.2f')} | {_num(r['pct_of_copy'], '.1f')} "
            f"| {r['baseline'] or ''} | {_num(r['baseline_ratio'], '.2f')} | {r['note'] or ''} |"
        )
    lines += ["", *targets(rows, size=size)]
    return "\n".join(lines)


def targets(rows: list[dict], *, size: int = TARGET_SIZE) -> list[str]:
    """One line per CPU target at ``size``: met, missed, or not measured."""
    out = [f"CPU targets at d = {size:,}:", ""]
    for label, spec, ops, field, threshold in CPU_TARGETS:
        found = [r for r in rows if r["spec"] == spec and r["op"] in ops and r["size"] == size]
        values = [r[field] for r in found if r[field] is not None]
        if len(values) < len(ops):
            out.append(f"- {label}: not measured")
            continue
        worst = min(values)
        unit = "%" if field == "pct_of_copy" else "x"
        verdict = "met" if worst >= threshold else "MISSED"
        out.append(f"- {label}: {verdict} (worst {worst:.2f}{unit})")
    return out
