"""Every recipe: parses, its --print_config output re-parses to the same config, and it trains.

Recipes that train on the embedded benchmark run ``fast_dev_run`` as written (with a tiny
dataset). Paper-scale recipes, whose data adapters and pretrained weights are not available
offline, run ``fast_dev_run`` on tiny synthetic data with the frame encoder's input shrunk to
32x32 pixels (every part and width is otherwise as in the recipe) and are profiled
(``vqa profile``) at full size.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from vqa_components.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))


def is_paper_scale(recipe: str) -> bool:
    cfg = yaml.safe_load((ROOT / recipe).read_text())
    return cfg.get("data", {}).get("dataset") != "synthetic_vqa"


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(list(args))
        except SystemExit as exc:  # --print_config exits after printing
            code = exc.code or 0
    return code, out.getvalue()


def test_there_are_recipes():
    assert "recipes/quickstart.yaml" in RECIPES and len(RECIPES) >= 2


@pytest.mark.parametrize("recipe", RECIPES)
def test_print_config_reparses_to_the_same_config(recipe, tmp_path):
    code, printed = run("fit", "--config", str(ROOT / recipe), "--print_config")
    assert code == 0
    first = tmp_path / "printed.yaml"
    first.write_text(printed)
    code, again = run("fit", "--config", str(first), "--print_config")
    assert code == 0
    assert yaml.safe_load(again) == yaml.safe_load(printed)


SHRINK_PAPER = [
    "--data.dataset=synthetic_vqa",
    "--data.dataset_args={num_train: 32, num_val: 16, num_test: 16, clip_frames: 32, num_frames: 16, frame_size: 32}",
    "--data.batch_size=2",
    "--data.num_workers=0",
    "--trainer.precision=32-true",
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_fast_dev_run(recipe, tmp_path, tiny_data):
    args = ["fit", "--config", str(ROOT / recipe), "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    if is_paper_scale(recipe):
        cfg = yaml.safe_load((ROOT / recipe).read_text())
        args += SHRINK_PAPER + ["--model.backbone.init_args.image_size=32"]
        if cfg["model"]["head"].get("name") == "answer_classifier":
            args.append("--model.head.init_args.num_answers=16")
    else:
        args += tiny_data
    code, _ = run(*args)
    assert code == 0


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("recipes/videodistill/") or r == "recipes/quickstart.yaml"])
def test_recipe_profiles(recipe):
    code, out = run("profile", "--config", str(ROOT / recipe))
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["params"] >= report["trainable_params"] > 0
    assert report["gflops"] == pytest.approx(2 * report["gmacs"])
