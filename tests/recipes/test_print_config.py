"""Every recipe parses, its ``--print_config`` output re-parses to the same config, and a paper
recipe's header says where its weights come from and where its earlier stage goes."""

from __future__ import annotations

import pytest
import yaml
from helpers import RECIPES, ROOT, recipe_config, run_vqa

PAPER = [r for r in RECIPES if recipe_config(r)["data"].get("dataset") != "synthetic_vqa"]


def test_there_are_recipes():
    assert "recipes/quickstart.yaml" in RECIPES and len(PAPER) >= 30


@pytest.mark.parametrize("recipe", RECIPES)
def test_print_config_reparses_to_the_same_config(recipe, tmp_path):
    code, printed = run_vqa("fit", "--config", ROOT / recipe, "--print_config")
    assert code == 0
    first = tmp_path / "printed.yaml"
    first.write_text(printed)
    code, again = run_vqa("fit", "--config", first, "--print_config")
    assert code == 0
    assert yaml.safe_load(again) == yaml.safe_load(printed)
    assert yaml.safe_load(printed)["model"]["objectives"], "the printed config lost the objectives"


FROZEN_CLIP = [r for r in PAPER if recipe_config(r)["model"].get("backbone", {}).get("name") == "open_clip"
               and recipe_config(r)["model"]["backbone"].get("frozen")]
LATER_STAGES = [r for r in PAPER if recipe_config(r)["model"].get("init_parts") and not recipe_config(r)["model"].get("init_from")]


def test_the_paper_recipes_have_frozen_towers_and_later_stages():
    assert len(FROZEN_CLIP) >= 10 and len(LATER_STAGES) >= 10


def header(recipe: str) -> str:
    lines = (ROOT / recipe).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if line.startswith("#"))


@pytest.mark.parametrize("recipe", FROZEN_CLIP)
def test_a_frozen_clip_tower_names_its_weights_and_the_header_how_to_fill_the_cache_or_give_a_file(recipe):
    assert recipe_config(recipe)["model"]["backbone"]["pretrained"] == "openai"
    assert "hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors" in header(recipe)
    assert "--model.backbone.init_args.checkpoint /path/to/open_clip_pytorch_model.bin" in header(recipe)


def test_a_local_file_given_on_the_command_line_replaces_the_named_weights(tmp_path):
    """The header's override parses: ``checkpoint`` is set beside ``pretrained``, and the part reads the
    file, not the hub (``checkpoint`` wins: tests/test_weights.py)."""
    local = tmp_path / "open_clip_pytorch_model.bin"
    code, printed = run_vqa("fit", "--config", ROOT / FROZEN_CLIP[0], "--print_config",
                            f"--model.backbone.init_args.checkpoint={local}")
    assert code == 0
    backbone = yaml.safe_load(printed)["model"]["backbone"]["init_args"]
    assert (backbone["checkpoint"], backbone["pretrained"]) == (str(local), "openai")


@pytest.mark.parametrize("recipe", LATER_STAGES)
def test_a_later_stage_says_how_to_give_the_earlier_one_or_train_from_scratch(recipe):
    assert "--model.init_from" in header(recipe) and "--model.init_parts null" in header(recipe)
