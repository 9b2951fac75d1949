"""``vqa shards``: converts the asked splits, says so when a split is converted already, and refuses
(one line, exit status 2) arguments that do not fit an earlier conversion or each other."""

from __future__ import annotations

import json

from helpers import run_vqa

TINY_SYNTHETIC = {"num_train": 32, "num_val": 16, "num_test": 16, "clip_frames": 32, "clip_size": 32}


def test_the_command_converts_resumes_and_refuses_other_arguments(tmp_path, capsys):
    out = tmp_path / "shards"
    args = ["shards", "--dataset", "synthetic_vqa", "--dataset_args", json.dumps(TINY_SYNTHETIC), "--out", out,
            "--split", "val", "--part_size", "8"]  # fmt: skip
    code, printed = run_vqa(*args)
    assert code == 0 and "val: 16 of 16 records in 2 chunks" in printed, printed
    assert (out / "val" / "index.json").is_file() and not (out / ".parts").exists()
    code, printed = run_vqa(*args)
    assert code == 0 and "already converted" in printed
    capsys.readouterr()
    code, _ = run_vqa(*args[:-2], "--part_size", "4")  # another layout of the same split: refused, not mixed
    assert code == 2 and "an earlier conversion of this split used other arguments: part_size=8 (now 4)" in (
        capsys.readouterr().err
    )
    code, _ = run_vqa(*args, "--frames", "4")
    assert code == 2 and "--frames and --size go together" in capsys.readouterr().err
    code, _ = run_vqa("shards", "--dataset", "synthetic_vqa", "--dataset_args", "[1, 2]", "--out", out)
    assert code == 2 and "--dataset_args: must be a mapping" in capsys.readouterr().err


def test_a_recipe_names_the_dataset_and_its_splits(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"data": {"dataset": "synthetic_vqa", "dataset_args": TINY_SYNTHETIC,
                                           "val_split": None, "test_split": None}}))  # fmt: skip
    code, printed = run_vqa(
        "shards", "--config", recipe, "--out", tmp_path / "shards", "--frames", "2", "--size", "16"
    )
    assert code == 0 and "train: 32 of 32 records" in printed and "val:" not in printed
    meta = json.loads((tmp_path / "shards" / "train" / "vqa_shards.json").read_text())
    assert (meta["stored"], meta["frames"], meta["size"], meta["kind"]) == ("decoded", 2, 16, "open_ended")
