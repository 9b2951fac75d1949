"""The papers' starting points: a paper recipe run without its pretrained weights in the Hugging Face
cache stops with one line naming the id, the cache folder looked in and the command that fills it.

The weights each recipe names are pinned beside the papers' words in ``test_paper_values.py``; here an
EMPTY temporary cache with ``HF_HUB_OFFLINE=1``: the fast tier runs the real ``vqa`` command in a
subprocess on one recipe of each paper family (stderr holds no traceback), the slow tier every paper
recipe in this process. Nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    EVILM_TOKENIZER_VIT,
    PAPER_HUB_NAMES,
    RECIPES,
    ROOT,
    paper_family,
    paper_starting_point,
    recipe_config,
    run_vqa,
    use_hub_cache,
    vocab_args,
)

#: every paper-scale recipe: each builds parts that name weights (E-ViLM's tokenizers: the tagger's ViT)
NAMING = [r for r in RECIPES if paper_family(r)]
ONE_PER_FAMILY = ["recipes/videodistill/finetune_msrvtt_qa.yaml", "recipes/cotok/finetune_msrvtt_qa.yaml",
                  "recipes/evilm/pretrain.yaml"]  # fmt: skip
#: co-tokenization's configuration closest to the blog's 67 GFLOPs: T5-large, its own pretraining
#: (docs/parts/cotok.md, "Paper configuration"); the other stages of the family start from t5-base
COTOK_67 = "recipes/cotok/finetune_msrvtt_qa_67gmacs.yaml"
T5_LARGE = {"text_encoder": {"pretrained_path": "t5-large"}, "head": {"pretrained_path": "t5-large"}}


#: what the recipes of each family name, part by part (the table in docs/using-models.md): every stage
#: of a family starts from the same weights and vocabulary, so that a later stage loads an earlier one
#: (``objectives.svq.tagger``: the ``tagger`` block of the objective ``svq``)
STARTING_POINTS = {
    "videodistill": {"backbone": {"pretrained": "openai"}, "text_encoder": {"pretrained": "openai"}},
    "cotok": {"text_encoder": {"pretrained_path": "t5-base"}, "head": {"pretrained_path": "t5-base"}},
    "evilm": {"backbone": {"model_name": "edgenext_small.usi_in1k", "pretrained": True}},
    "evilm_tokenizer": {"objectives.svq.tagger": {"model_name": EVILM_TOKENIZER_VIT, "pretrained": True}},
}


def part_config(model: dict, part: str) -> dict:
    """``model[part]``, or for ``objectives.NAME.FIELD`` the field of the objective ``NAME``."""
    if not part.startswith("objectives."):
        return model[part]
    _, name, field = part.split(".")
    (objective,) = [o for o in model["objectives"] if o["name"] == name]
    return objective[field]


def test_the_recipes_that_name_weights():
    assert {paper_starting_point(r) for r in NAMING} == set(PAPER_HUB_NAMES) and len(NAMING) == 36
    assert [r for r in NAMING if paper_starting_point(r) == "evilm_tokenizer"] == [
        "recipes/evilm/ablations/tokenizer_bce.yaml", "recipes/evilm/tokenizer.yaml"]  # fmt: skip
    assert set(ONE_PER_FAMILY) <= set(NAMING)


@pytest.mark.parametrize("recipe", NAMING)
def test_every_recipe_of_a_family_names_the_same_starting_points(recipe):
    model = recipe_config(recipe)["model"]
    expected = T5_LARGE if recipe == COTOK_67 else STARTING_POINTS[paper_starting_point(recipe)]
    for part, named in expected.items():
        config = part_config(model, part)
        assert {k: config.get(k) for k in named} == named, part
        # no local file to fill in, and T5's own vocabulary: the id's tokenizer, not another one
        assert not {"checkpoint", "config", "tokenizer_path"} & set(config), part


def assert_the_missing_weights_line(stderr: str, recipe: str, cache: Path) -> None:
    named = ("t5-large", "hf download t5-large") if recipe == COTOK_67 else None
    repo, command = named or PAPER_HUB_NAMES[paper_starting_point(recipe)]
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("vqa: error: ") and f" {repo}" in line, line
    assert f"is not in the Hugging Face cache {cache} and offline (HF_HUB_OFFLINE=1)" in line, line
    assert f"run `{command}`" in line, line


def test_one_recipe_per_family_without_its_weights_stops_with_one_line_from_the_vqa_command(tmp_path):
    vqa = Path(sys.executable).with_name("vqa")
    assert vqa.is_file(), "the vqa command is installed beside the interpreter (pip install -e .)"
    cache = tmp_path / "empty_hub"
    cache.mkdir()
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    runs = {
        recipe: subprocess.Popen(
            [str(vqa), "fit", "--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp_path}/{i}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i, recipe in enumerate(ONE_PER_FAMILY)
    }  # the three at once: each spends its seconds importing
    for recipe, proc in runs.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (recipe, stderr[-3000:])
        assert_the_missing_weights_line(stderr, recipe, cache)
    assert not list(tmp_path.rglob("*.ckpt")) and list(cache.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("recipe", NAMING)
def test_every_paper_recipe_without_its_weights_stops_with_one_line(recipe, tmp_path, monkeypatch, capsys):
    cache = use_hub_cache(monkeypatch, tmp_path / "empty_hub")
    vocab = vocab_args(recipe, tmp_path)  # the tokenizers build their text encoder (its vocabulary) first
    capsys.readouterr()
    assert run_vqa("fit", "--config", ROOT / recipe, f"--trainer.default_root_dir={tmp_path}", *vocab)[0] == 2
    assert_the_missing_weights_line(capsys.readouterr().err, recipe, cache)
