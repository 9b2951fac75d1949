"""Every recipe on the embedded benchmark trains: one training batch, one validation batch, the
checkpoint of its monitored metric, a finite loss, and (:class:`helpers.EveryParameterLearns`, in the
same step) a gradient for every trainable parameter and none for frozen ones.

Each fit is followed by ``vqa test`` of its last checkpoint (finite figures in ``test_metrics.json``).
The fast tier fits :data:`FAST_FITS`, a few tiny recipes that between them use every registered part
some tiny recipe uses, one of each paper family in ``bf16-mixed``; the slow tier fits every other
recipe on the embedded benchmark, and the fast set in the other precision.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import LEARNING_CHECKS, RECIPES, ROOT, recipe_config, run_vqa, vocab_args

from vqa_components.registry import REGISTRIES, import_builtin_parts

SYNTHETIC = [r for r in RECIPES if recipe_config(r).get("data", {}).get("dataset") == "synthetic_vqa"]

#: the fast tier's fits, with the precision each runs in: one of each paper family in bf16-mixed
FAST_FITS = {
    "recipes/quickstart.yaml": "32-true",
    "recipes/videodistill/tiny/pretrain.yaml": "bf16-mixed",
    "recipes/videodistill/tiny/a_baseline.yaml": "32-true",
    "recipes/videodistill/tiny/c_soft_sampling.yaml": "32-true",
    "recipes/cotok/tiny/question_only.yaml": "bf16-mixed",
    "recipes/evilm/tiny/pretrain.yaml": "bf16-mixed",
    "recipes/evilm/tiny/tokenizer.yaml": "32-true",
}
OTHER = {"32-true": "bf16-mixed", "bf16-mixed": "32-true"}

#: registered parts that no recipe on the embedded benchmark uses, and where each one's training is tested
TRAINED_ELSEWHERE = {
    ("backbone", "open_clip"): "tests/recipes/test_paper_scale.py (VideoDistill)",
    ("backbone", "timm"): "tests/recipes/test_paper_scale.py (E-ViLM)",
    ("backbone", "x3d"): "tests/recipes/test_paper_scale.py (co-tokenization)",
    ("text_encoder", "open_clip"): "tests/recipes/test_paper_scale.py (VideoDistill)",
    ("text_encoder", "hf_transformer"): "tests/test_parts.py, tests/text/test_hf_transformer.py",
    ("fusion", "la_gate"): "tests/test_parts.py, tests/fusion/test_la_gate_fusion.py",
    ("head", "retrieval"): "tests/test_parts.py, tests/heads/test_retrieval.py",
    ("head", "unimodal_retrieval"): "tests/test_parts.py, tests/heads/test_unimodal_retrieval.py",
    ("objective", "captioning"): "tests/recipes/test_paper_scale.py (co-tokenization pretraining)",
}
KINDS = {"backbone": "backbone", "text_encoder": "text_encoder", "sampler": "sampler", "fusion": "fusion",
         "head": "head", "objectives": "objective"}


def parts_of(recipe: str) -> set[tuple[str, str]]:
    """(kind, registry name) of every part a recipe names, nested ones (a stream's backbone) included."""
    found: set[tuple[str, str]] = set()

    def walk(kind: str, value) -> None:
        if isinstance(value, dict):
            if "name" in value:
                found.add((kind, value["name"]))
            for v in value.values():
                walk(kind, v)
        elif isinstance(value, list):
            for v in value:
                walk(kind, v)

    model = recipe_config(recipe)["model"]
    for key, kind in KINDS.items():
        walk(kind, model.get(key))
    return found


def test_the_fast_fits_use_every_part_that_a_recipe_on_the_embedded_benchmark_uses():
    import_builtin_parts()
    registered = {(kind, name) for kind in KINDS.values() for name in REGISTRIES[kind].names()}
    fast = set().union(*(parts_of(r) for r in FAST_FITS))
    synthetic = set().union(*(parts_of(r) for r in SYNTHETIC))
    assert synthetic - fast == set(), "add a recipe that uses these parts to FAST_FITS"
    assert registered - synthetic == set(TRAINED_ELSEWHERE), "say where a part no tiny recipe uses is trained"
    assert set(FAST_FITS) <= set(SYNTHETIC)


def needs_init_from(recipe: str) -> bool:
    """A later stage: it names the parts to load (init_parts) but not the file (init_from)."""
    model = recipe_config(recipe)["model"]
    return bool(model.get("init_parts")) and not model.get("init_from")


def fit_and_check(recipe: str, precision: str, tmp_path: Path, tiny_data: list[str]) -> None:
    common = ["--config", str(ROOT / recipe), f"--trainer.default_root_dir={tmp_path}", *tiny_data,
              "--trainer.accelerator=cpu", f"--trainer.precision={precision}", "--trainer.enable_progress_bar=false",
              *vocab_args(recipe, tmp_path)]
    if needs_init_from(recipe):  # a later stage, from scratch: its frozen modules keep their random weights
        common += ["--model.init_parts=null", "--model.allow_random_frozen=true"]
    LEARNING_CHECKS.clear()
    code, _ = run_vqa("fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                      "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
                      "--trainer.callbacks+=helpers.EveryParameterLearns")
    assert code == 0
    assert len(LEARNING_CHECKS) == 1 and LEARNING_CHECKS[0]["trainable"] > 0
    assert math.isfinite(LEARNING_CHECKS[0]["loss"]), f"train/loss is {LEARNING_CHECKS[0]['loss']}"
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt")), "no checkpoint of the monitored metric"
    assert run_vqa("test", *common, "--ckpt_path=last", "--trainer.limit_test_batches=1")[0] == 0
    written = json.loads((tmp_path / "test_metrics.json").read_text())
    figures = {k: v for k, v in written.items() if k.startswith("test/")}  # beside: protocol, skipped
    assert "test/loss" in figures and all(math.isfinite(v) for v in figures.values()), written


@pytest.mark.parametrize("recipe", list(FAST_FITS))
def test_fast_fit(recipe, tmp_path, tiny_data):
    fit_and_check(recipe, FAST_FITS[recipe], tmp_path, tiny_data)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(FAST_FITS))
def test_fast_set_in_the_other_precision(recipe, tmp_path, tiny_data):
    fit_and_check(recipe, OTHER[FAST_FITS[recipe]], tmp_path, tiny_data)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in SYNTHETIC if r not in FAST_FITS])
def test_recipe_fits(recipe, tmp_path, tiny_data, one_thread):
    fit_and_check(recipe, "32-true", tmp_path, tiny_data)


def test_a_parameter_that_gets_no_gradient_fails_the_fit(tmp_path, tiny_data, monkeypatch):
    """The check itself: a fusion whose last self-attention layer is skipped is caught in the first step."""
    from vqa_components.fusion.cross_attention import CrossAttentionFusion

    original = CrossAttentionFusion.forward

    class Skip(torch.nn.Module):
        def forward(self, x, key_padding_mask=None):
            return x

    def skip_last_self_attention(self, video, text):
        layers = self.self_attn
        self.self_attn = torch.nn.ModuleList([*layers[:-1], Skip()])
        try:
            return original(self, video, text)
        finally:
            self.self_attn = layers

    monkeypatch.setattr(CrossAttentionFusion, "forward", skip_last_self_attention)
    with pytest.raises(AssertionError, match="never reaches.*fusion.self_attn"):
        fit_and_check("recipes/quickstart.yaml", "32-true", tmp_path, tiny_data)
    assert not LEARNING_CHECKS  # the check stopped the fit at its first step
