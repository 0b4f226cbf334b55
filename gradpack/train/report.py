"""The end of ``gradpack train``: a table against the baseline, plots, a JSON of the run."""

from __future__ import annotations

import json
import os

import numpy as np


def _final(run: dict, key: str) -> float | None:
    return run["evals"][-1].get(key) if run["evals"] else None


def summary_rows(results: dict) -> list[dict]:
    base = results.get("baseline")
    rows = []
    for label, run in results.items():
        ratio = base["bits_up"] / run["bits_up"] if base and run["bits_up"] else None
        tail = max(1, len(run["losses"]) // 20)
        rows.append({
            "run": label,
            "method": f"{run['algorithm']} / {run['compressor']}",
            "final_train_loss": float(np.mean(run["losses"][-tail:])),
            **{k: v for k, v in run["evals"][-1].items() if k != "step"},
            "bits_up_per_worker": run["bits_up"],
            "bits_down_per_worker": run["bits_down"],
            "compression_ratio_up": ratio,
            "wall_s": run["wall_s"],
            "encode_decode_s": run["encode_s"] + run["decode_s"],
            "comm_s": run["comm_s"],
        })
    return rows


def _human_bits(bits: float) -> str:
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.2f} {unit}"
    return f"{bits:.0f} bit"


def table(rows: list[dict], title: str):
    """Metrics down, runs across (fits an 80-column terminal)."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("")
    for r in rows:
        t.add_column(f"{r['run']}\n{r['method']}", justify="right")
    metrics = [("final train loss", "final_train_loss", "{:.4f}"),
               ("test accuracy", "test_accuracy", "{:.2%}"),
               ("test loss", "test_loss", "{:.4f}"),
               ("val loss", "val_loss", "{:.4f}"),
               ("val bits per byte", "val_bits_per_byte", "{:.3f}"),
               ("bits up / worker", "bits_up_per_worker", None),
               ("bits down / worker (server)", "bits_down_per_worker", None),
               ("compression ratio (up)", "compression_ratio_up", "{:.1f}x"),
               ("wall time (s)", "wall_s", "{:.1f}"),
               ("encode + decode (s)", "encode_decode_s", "{:.2f}"),
               ("communication (s)", "comm_s", "{:.2f}")]
    for name, key, fmt in metrics:
        if key not in rows[0]:
            continue
        cells = []
        for r in rows:
            v = r.get(key)
            cells.append("-" if v is None else _human_bits(v) if fmt is None else fmt.format(v))
        t.add_row(name, *cells)
    return t


def _smooth(y: list[float], window: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    head = np.cumsum(y[:window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(y, kernel, mode="valid")])


def plots(results: dict, out_dir: str, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for xkey, fname, xlabel in (("steps", "loss_vs_steps.png", "step"),
                                ("bits", "loss_vs_bits.png", "bits sent up per worker")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, run in results.items():
            y = _smooth(run["losses"], max(1, len(run["losses"]) // 50))
            x = np.arange(1, len(y) + 1) if xkey == "steps" else np.asarray(run["bits_up_cum"])
            ax.plot(x, y, label=f"{label}: {run['algorithm']} / {run['compressor']}")
        if xkey == "bits":
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss (mean over workers, smoothed)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def save_json(config: dict, results: dict, rows: list[dict], out_dir: str) -> str:
    path = os.path.join(out_dir, "run.json")
    with open(path, "w") as f:
        json.dump({"config": config, "summary": rows, "runs": results}, f, indent=1)
    return path
