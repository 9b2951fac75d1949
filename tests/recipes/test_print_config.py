"""Every recipe parses, its ``--print_config`` output re-parses to the same config, and a paper
recipe's header says where its weights and its earlier stage go."""

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


@pytest.mark.parametrize("recipe", FROZEN_CLIP)
def test_a_frozen_clip_tower_has_its_checkpoint_key_to_fill_in(recipe):
    assert "checkpoint" in recipe_config(recipe)["model"]["backbone"]
    assert "open_clip_pytorch_model.bin" in (ROOT / recipe).read_text()


@pytest.mark.parametrize("recipe", LATER_STAGES)
def test_a_later_stage_says_how_to_give_the_earlier_one_or_train_from_scratch(recipe):
    header = "".join(line for line in (ROOT / recipe).read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "--model.init_from" in header and "--model.init_parts null" in header
