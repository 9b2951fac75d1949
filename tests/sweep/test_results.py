"""sweep.json merges records from many writers; the table is mean ± sample std per row and family."""

from __future__ import annotations

import json
import multiprocessing
import statistics

from vqa_components.sweep import results


def record(key, row, order, seed, acc, families=None, returncode=0):
    metrics = None if returncode else {"test/acc": acc, **{f"test/acc_{f}": v for f, v in (families or {}).items()}}
    return {"key": key, "run": row, "override": "", "seed": seed, "row": row, "order": order, "args": [],
            "returncode": returncode, "metrics": metrics, "wall_s": 1.0, "stages": []}


def test_table_is_mean_and_sample_std_over_seeds():
    records = [record("a0", "A", 0, 0, 0.50, {"spatial": 1.0, "motion": 0.25}),
               record("a1", "A", 0, 1, 0.60, {"spatial": 0.5, "motion": 0.75}),
               record("a2", "A", 0, 2, 0.70, {"spatial": 0.75}),
               record("b0", "B", 1, 0, 0.25),
               record("c0", "C", 2, 0, 0.0, returncode=1)]  # a failed run is no row
    lines = results.table(records).splitlines()
    assert lines[0] == "| model | overall | spatial | motion | seeds |"
    sd = statistics.stdev([50.0, 60.0, 70.0])
    assert lines[2] == f"| A | 60.0 ± {sd:.1f} | 75.0 ± 25.0 | 50.0 ± 35.4 | 3 |"
    assert lines[3] == "| B | 25.0 | n/a | n/a | 1 |" and len(lines) == 4
    assert results.table(records, {"columns": ["motion"]}).splitlines()[0] == "| model | overall | motion | seeds |"


def _merge(args):
    out, worker = args
    for i in range(worker * 12, worker * 12 + 12):  # records with some bulk: a wide read-modify-write window
        results.merge_record(out, dict(record(f"k{i}", f"row{i % 3}", i % 3, i, i / 50), stages=[{"x": "y" * 50}] * 200))


def test_concurrent_writers_lose_no_record(tmp_path):
    """SLURM jobs and --parallel threads merge into one sweep.json under a file lock."""
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_merge, [(tmp_path, worker) for worker in range(4)])
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert sorted(r["key"] for r in data["records"]) == sorted(f"k{i}" for i in range(48))
    results.merge_record(tmp_path, record("k3", "row0", 0, 3, 0.99))  # the same key replaces
    data = results.load(tmp_path)
    assert len(data["records"]) == 48 and [r["metrics"]["test/acc"] for r in data["records"] if r["key"] == "k3"] == [0.99]
    assert (tmp_path / "table.md").read_text().count("| row") == 3
    assert results.plot(data, tmp_path / "plot.png") and (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
