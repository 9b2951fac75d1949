"""``vqa sweep`` end to end on tiny runs: the table from sweep.json, resuming, a changed recipe, a kill."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_vqa

#: a few steps of the quickstart on a few clips (``base:`` reads the packaged recipe)
TINY = """base: {base}
trainer: {{max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1}}
data:
  dataset_args: {{num_train: 32, num_val: 16, num_test: 16, clip_frames: 32, num_frames: 4}}
  batch_size: 4
  num_workers: 0
"""
SWEEP = "seeds: [0, 1]\nruns:\n  full: {recipe: ./a.yaml, label: quickstart}\n  blind: ./b.yaml\n"


def tiny_sweep(folder: Path) -> Path:
    (folder / "a.yaml").write_text(TINY.format(base="quickstart"))
    (folder / "b.yaml").write_text(TINY.format(base="quickstart_question_only"))
    (folder / "sweep.yaml").write_text(SWEEP)
    return folder / "runs" / "sweeps" / "sweep"


def stage_times(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime for p in out.glob("runs/*/seed*/*/stage.json")}


def cells(table: str, row: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_sweep_table_resume_and_changed_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tiny_sweep(tmp_path)
    code, printed = run_vqa("sweep", "sweep.yaml", "--parallel", "2")
    assert code == 0, printed
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["records"]) == 4 and all(r["returncode"] == 0 for r in data["records"])
    table = (out / "table.md").read_text()
    header = [c.strip() for c in table.splitlines()[1].strip("|").split("|")]
    assert header[:2] == ["model", "overall"] and header[-1] == "seeds" and len(header) == 7  # 4 families
    for row in ("quickstart", "blind"):  # by hand, from the JSON
        runs = [r["metrics"] for r in data["records"] if r["row"] == row]
        expected = []
        for column in header[1:-1]:
            values = [100 * m["test/acc" if column == "overall" else f"test/acc_{column}"] for m in runs]
            expected.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
        assert cells(table, row) == [*expected, "2"]
    assert (out / "plot.png").is_file() and "| quickstart |" in printed

    before = stage_times(out)
    code, printed = run_vqa("sweep", "sweep.yaml")
    assert code == 0 and "4 of 4 runs finished already" in printed and stage_times(out) == before

    # a changed recipe: its runs only are run again (--dry-run says what would run and runs nothing)
    (tmp_path / "b.yaml").write_text(TINY.format(base="quickstart_question_only").replace("batches: 2", "batches: 3"))
    code, printed = run_vqa("sweep", "sweep.yaml", "--dry-run")
    assert code == 0 and "2 of 4 runs finished already" in printed, printed
    assert [line.split(" (")[0] for line in printed.splitlines() if line.endswith("):")] == ["blind seed 0",
                                                                                           "blind seed 1"]
    assert printed.count("  vqa fit --config") == 2 and printed.count("  vqa test --config") == 2
    assert stage_times(out) == before
    assert json.loads((out / "sweep.json").read_text())["records"] == data["records"]  # a dry run changes nothing
    code, printed = run_vqa("sweep", "sweep.yaml", "--dry-run", "--out", "elsewhere")
    assert code == 0 and "0 of 4 runs finished already" in printed and not (tmp_path / "elsewhere").exists()


def test_a_run_under_way_in_another_process_is_skipped_not_run_twice(tmp_path, monkeypatch):
    """Two sweeps over one folder (or a sweep beside SLURM jobs) must not train the same run into the
    same folder at once: a run whose folder another process has locked is skipped."""
    import fcntl

    monkeypatch.chdir(tmp_path)
    out = tiny_sweep(tmp_path)
    held = []
    for run in ("full", "blind"):
        for seed in (0, 1):
            folder = out / "runs" / run / f"seed{seed}"
            folder.mkdir(parents=True)
            f = (folder / ".running").open("w")
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sweep holds every run
            held.append(f)
    code, printed = run_vqa("sweep", "sweep.yaml")
    assert code == 0 and printed.count("running in another process (vqa sweep or a job), skipped") == 4
    assert not list(out.glob("runs/*/seed*/*/stage.json")) and not json.loads((out / "sweep.json").read_text())["records"]
    for f in held:
        f.close()


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_runs(tmp_path):
    out = tiny_sweep(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "vqa_components.cli", "sweep", "sweep.yaml"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill the sweep (and its vqa processes) once its first run is recorded
        records = json.loads((out / "sweep.json").read_text())["records"] if (out / "sweep.json").is_file() else []
        if records:
            break
        time.sleep(0.5)
    time.sleep(3)  # the second run is under way
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = json.loads((out / "sweep.json").read_text())["records"]
    assert len(first) == 1
    finished = Path(first[0]["stages"][0]["commands"][0][-3].split("=", 1)[1])  # --trainer.default_root_dir
    mtime = (finished / "stage.json").stat().st_mtime
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 of 4 runs finished already" in res.stdout
    assert (finished / "stage.json").stat().st_mtime == mtime
    assert len(json.loads((out / "sweep.json").read_text())["records"]) == 4


def test_the_documented_sweep_file_runs_what_it_says(tmp_path, monkeypatch):
    """docs/recipes.md's ablation of one's own: 2 runs x 2 overrides x 3 seeds, rows as the page says,
    and every fit command it would run parses."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    block = next(b for b in page.split("```yaml\n")[1:] if b.startswith("# my_ablation.yaml")).split("```")[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_ablation.yaml").write_text(block)
    code, printed = run_vqa("sweep", "my_ablation.yaml", "--dry-run")
    assert code == 0 and "0 of 12 runs finished already" in printed, printed
    heads = [line.split(" (")[0] for line in printed.splitlines() if line.endswith("):")]
    assert heads[:4] == ["LA-Gate [k8] seed 0", "LA-Gate [k4] seed 0", "cross-attention [k8] seed 0",
                         "cross-attention [k4] seed 0"]
    fits = [line.split()[1:] for line in printed.splitlines() if line.startswith("  vqa fit ")][:4]
    for fit in fits:
        code, out = run_vqa(*[a for a in fit if a != "--overwrite"], "--print_config")
        assert code == 0 and "seed_everything: 0" in out
    assert "num_frames: 4" in out and "max_frames: 4" in out  # the k4 override reached the parts
