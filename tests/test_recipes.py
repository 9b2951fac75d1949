"""Every recipe: parses, its --print_config output re-parses to the same config, and it trains.

Recipes that train on the embedded benchmark train one batch, validate one batch and save the
checkpoint of their monitored metric, as written (with a tiny dataset). Paper-scale recipes,
whose data adapters and pretrained weights are not available offline, run ``fast_dev_run`` on
tiny synthetic data with the frame encoder's input shrunk to 32x32 pixels (every part and width
is otherwise as in the recipe; the frozen CLIP tower keeps its random weights,
``allow_random_frozen``, and fine-tuning recipes start from scratch, ``init_parts: null``) and
are profiled (``vqa profile``) at full size.
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


def needs_init_from(recipe: str) -> bool:
    """A fine-tuning recipe: it names the parts to load (init_parts) but not the file (init_from)."""
    model = yaml.safe_load((ROOT / recipe).read_text())["model"]
    return bool(model.get("init_parts")) and not model.get("init_from")


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
    "--trainer.precision=32-true",  # bf16-mixed: tests/test_mixed_precision.py, on the tiny recipes'
]  # parts (the full-width towers take minutes per step in bf16 on a CPU without bf16 instructions)


def paper_args(recipe: str) -> list[str]:
    """A paper-scale recipe on tiny synthetic data, offline: no CLIP weights, no pretraining checkpoint."""
    args = [*SHRINK_PAPER, "--model.backbone.init_args.image_size=32", "--model.allow_random_frozen=true"]
    if yaml.safe_load((ROOT / recipe).read_text())["model"]["head"].get("name") == "answer_classifier":
        args.append("--model.head.init_args.num_answers=16")
    if needs_init_from(recipe):
        args.append("--model.init_parts=null")
    return args


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains(recipe, tmp_path, tiny_data):
    """Recipes on the embedded benchmark: one training batch, one validation batch and the
    checkpoint of the monitored metric (a recipe whose model does not log that metric fails).
    Paper-scale recipes: ``fast_dev_run`` (no checkpoint: it would be a full-size model on disk)."""
    args = ["fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    paper = is_paper_scale(recipe)
    if paper:
        args += [*paper_args(recipe), "--trainer.fast_dev_run=1"]
    else:
        args += tiny_data + ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                             "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1"]
    code, _ = run(*args)
    assert code == 0
    if not paper:
        assert list((tmp_path / "checkpoints").glob("best-*.ckpt")), "no checkpoint of the monitored metric"


PAPER = [r for r in RECIPES if is_paper_scale(r)]


@pytest.mark.parametrize("recipe", PAPER)
def test_paper_recipes_show_where_weights_and_the_earlier_stage_go(recipe):
    """The frozen CLIP tower has a checkpoint key to fill in; a recipe that loads parts of an earlier
    stage says in its header how to give that stage, and how to train from scratch instead."""
    text = (ROOT / recipe).read_text()
    model = yaml.safe_load(text)["model"]
    if model["backbone"].get("name") == "open_clip" and model["backbone"].get("frozen"):
        assert "checkpoint" in model["backbone"] and "open_clip_pytorch_model.bin" in text
    if needs_init_from(recipe):
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        assert "--model.init_from" in header and "--model.init_parts null" in header


@pytest.mark.slow
def test_paper_recipe_without_its_weights_stops_before_training(tmp_path, capsys):
    """What a user who runs a fine-tuning recipe as shipped sees: first the missing pretraining
    checkpoint, then (training from scratch) the frozen CLIP tower's missing weights; one line each."""
    recipe = "recipes/videodistill/finetune_msvd_qa.yaml"
    args = ["fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp_path}",
            *[a for a in paper_args(recipe) if a not in ("--model.allow_random_frozen=true", "--model.init_parts=null")]]
    capsys.readouterr()
    assert run(*args)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vqa: error: init_parts ['text_encoder', 'sampler', 'fusion'] is set but init_from")
    assert run(*args, "--model.init_parts=null")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vqa: error: frozen part(s) backbone still have their random initialisation")
    assert "--model.backbone.checkpoint /path/to/open_clip_pytorch_model.bin" in err[-1]
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("recipes/videodistill/") or r == "recipes/quickstart.yaml"])
def test_recipe_profiles(recipe):
    code, out = run("profile", "--config", str(ROOT / recipe))
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["params"] >= report["trainable_params"] > 0
    assert report["gmacs"] == pytest.approx(sum(p["gmacs"] for p in report["per_part"].values()), rel=1e-9)
    assert all(p["params"] >= p["trainable_params"] >= 0 for p in report["per_part"].values())


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_trainable_parameter_learns_and_frozen_parts_stay_out_of_the_optimizer(recipe, tiny_data):
    """What DDP needs without ``find_unused_parameters``: one training step reaches every trainable
    parameter; frozen parts get no gradient and are not given to the optimizer."""
    import torch

    from vqa_components.cli import release, run_cli

    args = ["--config", str(ROOT / recipe), "--data.num_workers=0"]
    if is_paper_scale(recipe):
        args += paper_args(recipe)
    else:
        args += tiny_data
    cli = run_cli(args, run=False)
    model, dm = cli.model, cli.datamodule
    release(cli)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model.train()
    out = model(batch)
    model._loss(batch, out, "train").backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert not no_grad, f"parameters that one step never reaches (DDP would fail on them): {no_grad[:10]}"
    for name in model.frozen_parts:
        part = getattr(model, name)
        assert not any(p.requires_grad or p.grad is not None for p in part.parameters()), name
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    given = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert given == {id(p) for n, p in model.named_parameters() if n in trainable}
