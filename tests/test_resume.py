"""A run interrupted and resumed with ``--ckpt_path last`` ends as the run that was not: same samples in
the same order (no repeat, no gap), same weights bit for bit (CPU, ``--trainer.deterministic true``).

What makes it so: the training loader's order in the checkpoint (:mod:`vqa_components.data.data_order`)
and the random states (:mod:`vqa_components.random_state`). The fast tier interrupts the quickstart in
the middle of an epoch with the loader in the training process; the slow tier runs every case in real
``vqa`` processes: in the middle of an epoch and at its end, with 0 and 2 loader workers, and with a
dataset that draws frame positions and crops at random.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, recorded_samples, run_vqa

#: 4 batches of 4 per epoch; the runs train 6 steps (into the second epoch)
DATA = [
    "--data.dataset_args.num_train=16", "--data.dataset_args.num_val=16", "--data.dataset_args.num_test=16",
    "--data.dataset_args.clip_frames=32", "--data.dataset_args.num_frames=4", "--data.batch_size=4",
]
COMMON = ["--config", str(ROOT / "recipes/quickstart.yaml"), "--trainer.deterministic=true",
          "--trainer.enable_progress_bar=false", "--trainer.max_epochs=-1", "--trainer.limit_val_batches=1",
          "--trainer.callbacks+=helpers.RecordSamples"]
STEPS = 6


def weights(root: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


def assert_same_run(straight: Path, resumed: Path) -> None:
    seen, again = recorded_samples(straight), recorded_samples(resumed)
    assert again == seen  # every step: its epoch and its samples (no repeat, no gap, same order)
    assert [r["step"] for r in again] == list(range(1, STEPS + 1))
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights that differ after the resume: {different[:5]}"


def in_process(root: Path, *args: str) -> None:
    assert run_vqa("fit", *COMMON, f"--trainer.default_root_dir={root}", *args)[0] == 0


def test_a_run_resumed_in_the_middle_of_an_epoch_ends_as_the_uninterrupted_run(tmp_path):
    data = [*DATA, f"--data.dataset_args.root={tmp_path / 'data'}", "--data.num_workers=0"]
    in_process(tmp_path / "straight", *data, f"--trainer.max_steps={STEPS}")
    in_process(tmp_path / "resumed", *data, "--trainer.max_steps=3")  # stops in the first epoch
    first_part = recorded_samples(tmp_path / "resumed")
    in_process(tmp_path / "resumed", *data, f"--trainer.max_steps={STEPS}", "--ckpt_path=last")
    assert len(first_part) == 3
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def vqa(root: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "vqa_components.cli", "fit", *COMMON, f"--trainer.default_root_dir={root}", *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def streaming_args(tmp_path: Path) -> list[str]:
    """The same synthetic data converted by ``vqa shards``, read by the ``streaming`` dataset."""
    synthetic = "{" + ", ".join(a.split(".", 2)[2].replace("=", ": ") for a in DATA if "dataset_args" in a)
    synthetic += f", root: {tmp_path / 'data'}}}"
    shards = tmp_path / "shards"
    done = subprocess.run([sys.executable, "-m", "vqa_components.cli", "shards", "--config",
                           str(ROOT / "recipes/quickstart.yaml"), "--dataset_args", synthetic, "--out", str(shards),
                           "--split", "train", "val"], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return ["--data.dataset=streaming", f"--data.dataset_args={{input_dir: {shards}, num_frames: 4}}",
            "--data.batch_size=4", "--data.test_split=null", "--data.predict_split=null"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [3, 4], ids=["mid_epoch", "epoch_end"])
@pytest.mark.parametrize("data", ["folder", "folder_random_frames_and_crops", "streaming"])
def test_interrupted_and_resumed_in_real_processes(tmp_path, workers, stop, data):
    args = [f"--data.num_workers={workers}"]
    if data == "streaming":
        args += streaming_args(tmp_path)
    else:
        args += [*DATA, f"--data.dataset_args.root={tmp_path / 'data'}"]
    if data == "folder_random_frames_and_crops":  # frame positions and a crop drawn for every sample, every epoch
        args += ["--data.dataset_args.frame_sampling=random", "--data.dataset_args.crop_size=48",
                 "--data.dataset_args.frame_size=56", "--model.backbone.grid=3"]
    vqa(tmp_path / "straight", *args, f"--trainer.max_steps={STEPS}")
    vqa(tmp_path / "resumed", *args, f"--trainer.max_steps={stop}")
    vqa(tmp_path / "resumed", *args, f"--trainer.max_steps={STEPS}", "--ckpt_path=last")
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
