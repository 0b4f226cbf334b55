"""``gradpack bench`` runs end to end at a tiny size and writes rows in the results schema.

Correctness of the plumbing only: timings are never asserted (DESIGN.md)."""

import csv
import json

import pytest

from gradpack.bench import results
from gradpack.cli import main


def test_bench_writes_results_schema(tmp_path, capsys):
    argv = ["bench", "--sizes", "4096", "--repeats", "2", "--specs", "sign,qsgd:4",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / results.JSONL).read_text().splitlines()]
    assert rows and all(tuple(r) == results.FIELDS for r in rows)
    ops = {(r["spec"], r["op"]) for r in rows}
    copy_s = next(r["time_s"] for r in rows if r["op"] == "copy")
    assert ("", "copy") in ops
    for spec in ("sign", "qsgd:4"):
        assert {(spec, op) for op in ("encode", "decode_sum", "ef21", "ef14")} <= ops
    for r in rows:
        assert r["size"] == 4096 and r["device"] == "cpu" and r["device_name"]
        assert r["time_s"] > 0 and r["gbps"] > 0 and r["pct_of_copy"] > 0
        assert r["version"] and r["timestamp"] and r["run"]
        if r["baseline"]:
            assert r["baseline_ratio"] > 0
        assert r["copy_ratio"] == pytest.approx(r["time_s"] / copy_s) and r["copy_ratio"] > 0
        assert r["op"] == "copy" or r["first_call_s"] > 0
    with (tmp_path / results.CSV).open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    out = capsys.readouterr().out
    assert "| size | spec | op |" in out and "CPU targets" in out
    assert main(["bench", "--table", "--out", str(tmp_path)]) == 0
