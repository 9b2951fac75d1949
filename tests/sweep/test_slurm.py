"""``vqa sweep --launcher slurm``: one job per stage, chained by dependencies, results in sweep.json.

A stand-in ``sbatch`` on PATH records each submission and runs the job script at once (SLURM would
run it later, after its dependency): the chain's second stage must read the first stage's checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import run_vqa

TINY = """base: quickstart
trainer: {max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1}
data:
  dataset_args: {num_train: 32, num_val: 16, num_test: 16, clip_frames: 32, num_frames: 4}
  batch_size: 4
  num_workers: 0
"""
CHAIN = """name: chain
slurm: [--time=00:10:00]
runs:
  two:
    label: two stages
    stages:
      - {name: first, recipe: ./tiny.yaml}
      - {name: second, recipe: ./tiny.yaml, args: ["--model.init_from={first.last}"]}
"""
FAKE_SBATCH = """#!{python}
import json, os, subprocess, sys
log = os.environ["FAKE_SBATCH_LOG"]
job = 100 + (sum(1 for _ in open(log)) if os.path.exists(log) else 0)
with open(log, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "script": open(sys.argv[-1]).read(), "id": job}}) + "\\n")
if os.environ.get("FAKE_SBATCH_RUN"):
    subprocess.run(["bash", sys.argv[-1]], check=False)
print(f"{{job}};cluster")
"""


def fake_sbatch(folder: Path, monkeypatch, run: bool) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH.format(python=sys.executable))
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(folder / "sbatch.log"))
    if run:
        monkeypatch.setenv("FAKE_SBATCH_RUN", "1")
    return folder / "sbatch.log"


@pytest.mark.slow  # two real tiny fits through the job scripts (30 s)
def test_slurm_chain_submits_stages_in_order_and_records_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "chain.yaml").write_text(CHAIN)
    log = fake_sbatch(tmp_path, monkeypatch, run=True)
    code, printed = run_vqa("sweep", "chain.yaml", "--launcher", "slurm", "--slurm", "--partition=debug --mem=8G")
    assert code == 0, printed
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [j["id"] for j in jobs] == [100, 101]
    assert "--dependency=afterok:100" in jobs[1]["argv"] and not any("dependency" in a for a in jobs[0]["argv"])
    for job, stage in zip(jobs, ("first", "second")):
        lines = job["script"].splitlines()
        assert {"#SBATCH --time=00:10:00", "#SBATCH --partition=debug", "#SBATCH --mem=8G"} <= set(lines)
        assert lines[-1].endswith(f"-m vqa_components.sweep.job {job['argv'][-1][:-len(f'.{stage}.sbatch')]}.json "
                                  f"{0 if stage == 'first' else 1}")
    assert "submitted 101 after 100: two seed 0 second" in printed

    out = tmp_path / "runs" / "sweeps" / "chain"
    (record,) = json.loads((out / "sweep.json").read_text())["records"]
    assert record["returncode"] == 0 and record["metrics"]["test/num_samples"] == 16
    first_last = out / "runs" / "two" / "seed0" / "first" / "checkpoints" / "last.ckpt"
    second_log = (out / "runs" / "two" / "seed0" / "second" / "stage.log").read_text()
    assert f"--model.init_from={first_last}" in second_log
    assert f"init_from {first_last}: loaded" in second_log  # the second stage started from the first
    assert "| two stages |" in (out / "table.md").read_text()

    code, printed = run_vqa("sweep", "chain.yaml", "--launcher", "slurm")  # finished: nothing to submit
    assert code == 0 and "1 of 1 runs finished already" in printed and len(log.read_text().splitlines()) == 2


def test_slurm_without_sbatch_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "chain.yaml").write_text(CHAIN)
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _ = run_vqa("sweep", "chain.yaml", "--launcher", "slurm")
    assert code == 2 and "no `sbatch` on PATH" in capsys.readouterr().err
