"""DDP through the ``vqa`` command, in real processes (gloo on the CPU), as a user starts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
# 16 test clips, 4 families cycling: each rank of 2 sees only 2 families, and 3 ranks share 16
# samples unevenly (6/5/5), where Lightning's default sampler would repeat 2 samples.
DATA = [
    "--data.dataset_args.num_train=32", "--data.dataset_args.num_val=16", "--data.dataset_args.num_test=16",
    "--data.dataset_args.clip_frames=32", "--data.dataset_args.num_frames=4", "--data.batch_size=4",
    "--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
]


def vqa(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed ``vqa`` console script, as a user runs it (Lightning's launcher re-runs its argv)."""
    exe = Path(sys.executable).with_name("vqa")
    assert exe.is_file(), f"the vqa command is not installed next to {sys.executable}"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False)


def metrics(root: Path) -> dict[str, float]:
    return json.loads((root / "test_metrics.json").read_text())


@pytest.mark.slow
def test_ddp_fit_then_ddp_test_equals_single_process_test(tmp_path):
    root = tmp_path / "run"
    # the recipe by name: the rank Lightning starts re-runs this command line and finds it again
    common = ["--config", "quickstart", f"--trainer.default_root_dir={root}", *DATA]
    fit = vqa("fit", *common, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_epochs=2")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in fit.stderr + fit.stdout  # the second rank really ran
    assert (root / "checkpoints" / "last.ckpt").is_file()

    single = vqa("test", *common, "--ckpt_path=best")
    assert single.returncode == 0, single.stderr[-3000:]
    one = metrics(root)
    (root / "test_metrics.json").unlink()
    ddp = vqa("test", *common, "--ckpt_path=best", "--trainer.strategy=ddp", "--trainer.devices=3")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    three = metrics(root)

    assert one["test/num_samples"] == three["test/num_samples"] == 16  # nothing repeated, nothing lost
    assert {k for k in one if k.startswith("test/acc")} == {
        "test/acc", "test/acc_spatial", "test/acc_motion", "test/acc_counting", "test/acc_needle"}
    for key, value in one.items():
        if key.startswith(("test/acc", "test/num_samples", "test/skipped")):
            assert three[key] == value, key  # counts summed over ranks: exactly the single-process figures
        else:  # losses: the mean of the ranks' means over 6/5/5 samples (documented), close to the mean
            assert three[key] == pytest.approx(value, rel=0.1), key
    assert ddp.stdout.count("test metrics written to") == 1  # rank 0 only
    assert "samples evaluated: 16" in ddp.stdout


@pytest.mark.slow
def test_ddp_spawn_fit_and_validate(tmp_path):
    root = tmp_path / "run"
    common = ["--config", QUICKSTART, f"--trainer.default_root_dir={root}", *DATA,
              "--trainer.strategy=ddp_spawn", "--trainer.devices=2"]
    fit = vqa("fit", *common, "--trainer.max_epochs=1", "--trainer.accumulate_grad_batches=2")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (root / "checkpoints" / "last.ckpt").is_file()
    val = vqa("validate", *common, "--ckpt_path=last")
    assert val.returncode == 0, val.stderr[-3000:]
    assert "val/acc" in val.stdout and "val/num_samples" in val.stdout


def test_explain_with_a_ddp_strategy_runs_in_one_process(tmp_path):
    """``explain`` builds the model without a trainer loop: a DDP strategy on the command line is harmless."""
    res = vqa("explain", "--config", QUICKSTART, f"--trainer.default_root_dir={tmp_path}", *DATA,
              "--trainer.strategy=ddp", "--trainer.devices=2", "--out", str(tmp_path / "x.png"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "x.png").is_file()


@pytest.mark.slow
def test_torchrun_launch_fit_and_predict(tmp_path):
    """What a multi-node launch runs on each node: ``torchrun ... vqa fit`` (Lightning sees the
    variables torchrun sets and launches nothing itself), here 2 processes on one CPU node."""
    exe = Path(sys.executable).with_name("vqa")
    torchrun = Path(sys.executable).with_name("torchrun")
    root = tmp_path / "run"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(exe)]
    common = ["--config", QUICKSTART, f"--trainer.default_root_dir={root}", *DATA,
              "--trainer.strategy=ddp", "--trainer.devices=2"]
    fit = subprocess.run([*cmd, "fit", *common, "--trainer.max_epochs=1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600, check=False)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in fit.stderr + fit.stdout
    assert (root / "checkpoints" / "last.ckpt").is_file()
    pred = subprocess.run([*cmd, "predict", *common, "--ckpt_path=last"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, check=False)
    assert pred.returncode == 0, pred.stderr[-3000:]
