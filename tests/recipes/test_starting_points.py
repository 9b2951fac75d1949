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
from helpers import PAPER_HUB_NAMES, RECIPES, ROOT, paper_family, recipe_config, run_vqa, use_hub_cache

#: every paper-scale recipe that builds parts (E-ViLM's stage-1 tokenizers name no weights: their
#: ViT starts from random weights, docs/using-models.md "The papers' starting points")
NAMING = [r for r in RECIPES if paper_family(r) and "name: svq" not in (ROOT / r).read_text()]
ONE_PER_FAMILY = ["recipes/videodistill/finetune_msrvtt_qa.yaml", "recipes/cotok/finetune_msrvtt_qa.yaml",
                  "recipes/evilm/pretrain.yaml"]  # fmt: skip


#: what the recipes of each family name, part by part (the table in docs/using-models.md): every stage
#: of a family starts from the same weights and vocabulary, so that a later stage loads an earlier one
STARTING_POINTS = {
    "videodistill": {"backbone": {"pretrained": "openai"}, "text_encoder": {"pretrained": "openai"}},
    "cotok": {"text_encoder": {"pretrained_path": "t5-base"}, "head": {"pretrained_path": "t5-base"}},
    "evilm": {"backbone": {"model_name": "edgenext_small.usi_in1k", "pretrained": True}},
}


def test_the_recipes_that_name_weights():
    assert {paper_family(r) for r in NAMING} == set(PAPER_HUB_NAMES) and len(NAMING) == 33
    assert set(ONE_PER_FAMILY) <= set(NAMING)


@pytest.mark.parametrize("recipe", NAMING)
def test_every_recipe_of_a_family_names_the_same_starting_points(recipe):
    model = recipe_config(recipe)["model"]
    for part, named in STARTING_POINTS[paper_family(recipe)].items():
        assert {k: model[part].get(k) for k in named} == named, part
        # no local file to fill in, and T5's own vocabulary: the id's tokenizer, not another one
        assert not {"checkpoint", "config", "tokenizer_path"} & set(model[part]), part


def assert_the_missing_weights_line(stderr: str, recipe: str, cache: Path) -> None:
    repo, command = PAPER_HUB_NAMES[paper_family(recipe)]
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
    capsys.readouterr()
    assert run_vqa("fit", "--config", ROOT / recipe, f"--trainer.default_root_dir={tmp_path}")[0] == 2
    assert_the_missing_weights_line(capsys.readouterr().err, recipe, cache)
