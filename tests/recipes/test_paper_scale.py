"""The paper recipes at full size, offline: their pretrained weights come from a temporary Hugging
Face cache that the tests fill themselves (:func:`helpers.paper_hub_cache`).

Every paper recipe is built on the meta device and runs a forward and backward on fake tensors
(:func:`helpers.fake_training_step`): every part and width as written, shapes checked, no values.
On the meta device no weights are looked up; the co-tokenization recipes' ``t5-base`` gives its
``config.json`` and tokenizer, which the cache holds (a SentencePiece model trained here). The fast
tier does one recipe per paper family, the slow tier all of them, plus one real training step per
family at the recipe's own frame count and size, its named weights read from a cache holding random
weights of the right architectures (a later stage trains without its earlier one, ``init_parts:
null``). ``vqa profile`` figures are pinned where a paper states them.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import (
    LEARNING_CHECKS,
    RECIPES,
    ROOT,
    T5_BASE,
    build_on_meta,
    fake_training_step,
    paper_family,
    paper_hub_cache,
    paper_starting_point,
    recipe_config,
    run_vqa,
    sentencepiece_model,
    t5_repository,
    use_hub_cache,
    vocab_args,
)

PAPER = [r for r in RECIPES if recipe_config(r)["data"].get("dataset") != "synthetic_vqa"]
#: one recipe of each paper family: the fast tier's wiring check and the slow tier's real step
FAMILIES = {
    "videodistill": "recipes/videodistill/finetune_msrvtt_qa.yaml",
    "cotok": "recipes/cotok/finetune_msrvtt_qa.yaml",
    "evilm": "recipes/evilm/finetune_msrvtt_qa.yaml",
}
#: the co-tokenization recipe closest to the blog's 67 GFLOPs names t5-large (the published config.json)
COTOK_67 = "recipes/cotok/finetune_msrvtt_qa_67gmacs.yaml"
T5_LARGE = {**T5_BASE, "d_model": 1024, "num_layers": 24, "num_heads": 16, "d_ff": 4096}


#: first stages whose objective trains its own encoder (E-ViLM's tokenizer): the model has no forward to
#: wire; their objective trains in tests/recipes/test_fits.py (recipes/evilm/tiny/tokenizer.yaml)
NO_FORWARD = [r for r in PAPER if "backbone" not in recipe_config(r)["model"]]


@pytest.fixture(scope="module")
def meta_hub(tmp_path_factory):
    """What the paper recipes read when built on the meta device: ``t5-base``'s and ``t5-large``'s config
    and tokenizer (open_clip and timm read nothing there)."""
    cache = paper_hub_cache(tmp_path_factory.mktemp("hub"), "cotok", weights=False)
    spiece = sentencepiece_model(tmp_path_factory.mktemp("spm"))
    t5_repository(cache, "t5-large", spiece, T5_LARGE, weights=False)
    return cache


@pytest.fixture(autouse=True)
def offline_hub(meta_hub, monkeypatch):
    use_hub_cache(monkeypatch, meta_hub)


def test_only_the_tokenizer_recipes_have_no_forward():
    assert NO_FORWARD == ["recipes/evilm/ablations/tokenizer_bce.yaml", "recipes/evilm/tokenizer.yaml"]


def check_wiring(recipe: str, tmp_path) -> None:
    model, dm = build_on_meta(recipe, *vocab_args(recipe, tmp_path))
    assert fake_training_step(model, dm.example_batch(2))["no_grad"] == []


@pytest.mark.parametrize("recipe", list(FAMILIES.values()))
def test_one_paper_recipe_per_family_is_wired_at_full_size(recipe, tmp_path):
    check_wiring(recipe, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in PAPER if r not in FAMILIES.values() and r not in NO_FORWARD])
def test_every_paper_recipe_is_wired_at_full_size(recipe, tmp_path):
    check_wiring(recipe, tmp_path)


def test_the_wiring_check_finds_a_part_the_forward_skips(tmp_path, monkeypatch):
    from vqa_components.fusion.co_tokenizer import CoTokenizerFusion

    original = CoTokenizerFusion.forward

    def without_the_video(self, video, text):
        out = original(self, video, text)
        out.tokens, out.pooled = out.tokens.detach(), out.pooled.detach()
        return out

    model, dm = build_on_meta(FAMILIES["cotok"])
    monkeypatch.setattr(CoTokenizerFusion, "forward", without_the_video)
    no_grad = fake_training_step(model, dm.example_batch(2))["no_grad"]
    assert any(n.startswith("fusion.") for n in no_grad) and any(n.startswith("backbone.") for n in no_grad)


def paper_size_data(recipe: str) -> str:
    """The embedded benchmark at the recipe's own frames and sizes, a handful of clips."""
    given = recipe_config(recipe)["data"]["dataset_args"]
    if "streams" in given:
        video = {"streams": given["streams"], "clip_frames": max(32, *(s["num_frames"] for s in given["streams"]))}
    else:
        size = given.get("frame_size", 224)
        video = {"num_frames": given["num_frames"], "frame_size": size, "clip_frames": max(32, given["num_frames"])}
    return "--data.dataset_args=" + json.dumps({"num_train": 16, "num_val": 16, "num_test": 16, **video})


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(FAMILIES.values()))
def test_one_real_training_step_per_family_at_paper_size(recipe, tmp_path, request, monkeypatch):
    model = recipe_config(recipe)["model"]
    if "name: x3d" in (ROOT / recipe).read_text():  # X3D's depthwise 3-D convolutions crawl on 2 contended threads
        request.getfixturevalue("one_thread")
    use_hub_cache(monkeypatch, paper_hub_cache(tmp_path / "hub", paper_family(recipe)))  # its named weights
    args = ["fit", "--config", ROOT / recipe, f"--trainer.default_root_dir={tmp_path}", "--data.dataset=synthetic_vqa",
            paper_size_data(recipe), "--data.batch_size=2", "--data.num_workers=0", "--trainer.precision=32-true",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.fast_dev_run=1",
            "--trainer.callbacks+=helpers.EveryParameterLearns", *vocab_args(recipe, tmp_path)]
    if model.get("head", {}).get("name") == "answer_classifier":
        args.append("--model.head.init_args.num_answers=16")  # the embedded benchmark's answers
    if model.get("init_parts"):
        args.append("--model.init_parts=null")
    LEARNING_CHECKS.clear()
    assert run_vqa(*args)[0] == 0
    assert len(LEARNING_CHECKS) == 1 and math.isfinite(LEARNING_CHECKS[0]["loss"])


@pytest.mark.slow
def test_the_tokenizer_recipe_starts_from_clip_s_vit_in_the_cache_and_trains_a_step(tmp_path, monkeypatch):
    """E-ViLM's stage 1 at paper size, its tagger's ViT read from a cache holding random weights of OpenAI
    CLIP's ViT-B/32 in timm's layout (:func:`helpers.paper_hub_cache`): the encoder built from the recipe
    holds them (the 7 x 7 position table resampled to 8 x 8, CLIP's projection dropped), and one real
    training step of the recipe runs."""
    import timm
    from safetensors.torch import load_file

    from vqa_components.layers.semantic_tokenizer import VideoTagger

    recipe = "recipes/evilm/tokenizer.yaml"
    hub = use_hub_cache(monkeypatch, paper_hub_cache(tmp_path / "hub", paper_starting_point(recipe)))
    block = next(o for o in recipe_config(recipe)["model"]["objectives"] if o["name"] == "svq")["tagger"]
    repo = timm.get_pretrained_cfg(block["model_name"]).hf_hub_id
    (saved_file,) = (hub / f"models--{repo.replace('/', '--')}").rglob("model.safetensors")
    saved = load_file(str(saved_file))
    encoder = VideoTagger(block).encoder
    assert encoder.weights_source == f"hf-hub:{repo}/model.safetensors" and encoder.grid == (8, 8)
    loaded = encoder.vit.state_dict()
    assert set(saved) - set(loaded) == {"head.weight", "head.bias"}
    assert all(torch.equal(v, saved[k]) for k, v in loaded.items() if k != "pos_embed")
    assert (saved["pos_embed"].shape, loaded["pos_embed"].shape) == ((1, 50, 768), (1, 65, 768))
    torch.testing.assert_close(loaded["pos_embed"][:, 0], saved["pos_embed"][:, 0])  # the class token's row
    data = {"num_train": 16, "num_val": 16, "num_test": 16, "num_frames": 4, "frame_size": 256,
            "clip_frames": 32}  # the recipe's 4 frames of 256 px
    args = ["fit", "--config", ROOT / recipe, f"--trainer.default_root_dir={tmp_path}",
            "--data.dataset=synthetic_vqa", "--data.dataset_args=" + json.dumps(data), "--data.batch_size=2",
            "--data.num_workers=0", "--trainer.precision=32-true", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.fast_dev_run=1",
            "--trainer.callbacks+=helpers.EveryParameterLearns", *vocab_args(recipe, tmp_path)]  # fmt: skip
    LEARNING_CHECKS.clear()
    assert run_vqa(*args)[0] == 0
    assert len(LEARNING_CHECKS) == 1 and math.isfinite(LEARNING_CHECKS[0]["loss"])


#: E-ViLM's Table 1: 16M parameters (without the head); EdgeNeXt-small, "1.26G FLOPs" per 256x256 frame
#: (timm's edgenext_small: 1.25 GMACs; the paper counts MACs, ../shared/ENVIRONMENT.md)
EVILM_PARAMS, EVILM_FRAME_GMACS = 16e6, 1.25


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=[] if r == FAMILIES["evilm"] else [pytest.mark.slow])
                                    for r in PAPER if r.startswith("recipes/evilm/finetune_")])
def test_evilm_fine_tuning_recipes_profile_as_the_paper_says(recipe, tmp_path):
    from vqa_components.profiler import profile_model

    model, dm = build_on_meta(recipe, *vocab_args(recipe, tmp_path))
    report = profile_model(model, dm.example_batch(1))
    without_head = report.params - report.per_part["head"]["params"]
    assert without_head == pytest.approx(EVILM_PARAMS, rel=0.15)
    frames = recipe_config(recipe)["data"]["dataset_args"]["num_frames"]
    assert report.per_part["backbone"]["gmacs"] / frames == pytest.approx(EVILM_FRAME_GMACS, abs=0.02)


COTOK_PAPER = [r for r in PAPER if r.startswith("recipes/cotok/")]


@pytest.mark.slow
def test_the_cotok_paper_recipes_share_one_configuration():
    """Every co-tokenization recipe of the smallest configuration (all but the ablations that change it
    and the one closest to the blog's 67 GFLOPs) profiles as fine-tuning on MSRVTT-QA does (3 X3D
    streams, one profile row per stream)."""
    from vqa_components.profiler import profile_model

    def profile(recipe):
        model, dm = build_on_meta(recipe)
        return profile_model(model, dm.example_batch(1))

    reference = profile(FAMILIES["cotok"])
    assert len(reference.per_stream) == 3  # one X3D per stream
    smallest = [r for r in COTOK_PAPER if r.startswith("recipes/cotok/finetune_") and r != COTOK_67]
    same = smallest + [r for r in COTOK_PAPER if r.endswith("/full.yaml")]
    assert len(same) == 4
    for recipe in same:
        assert profile(recipe).gmacs == pytest.approx(reference.gmacs, rel=1e-6), recipe


def test_meta_profile_counts_what_vqa_profile_counts():
    from vqa_components.profiler import profile_model

    recipe = "recipes/cotok/tiny/three_streams.yaml"
    code, out = run_vqa("profile", "--config", ROOT / recipe)
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["gmacs"] == pytest.approx(sum(p["gmacs"] for p in report["per_part"].values()), rel=1e-9)
    model, dm = build_on_meta(recipe)
    meta = profile_model(model, dm.example_batch(1))
    assert (meta.macs, meta.params, meta.trainable_params) == (report["macs"], report["params"], report["trainable_params"])


@pytest.mark.slow
def test_paper_recipe_without_its_weights_stops_before_training(tmp_path, capsys, monkeypatch):
    """What a user who runs a fine-tuning recipe as shipped sees, one line each: first the frozen CLIP
    tower's weights missing from the Hugging Face cache, then (the cache filled) the missing
    pretraining checkpoint."""
    recipe = "recipes/videodistill/finetune_msvd_qa.yaml"
    args = ["fit", "--config", ROOT / recipe, f"--trainer.default_root_dir={tmp_path}", "--data.dataset=synthetic_vqa",
            "--data.dataset_args={num_train: 4, num_val: 2, num_test: 2, clip_frames: 4, num_frames: 4, frame_size: 32}",
            "--model.backbone.init_args.image_size=32", "--model.head.init_args.num_answers=16"]
    empty = use_hub_cache(monkeypatch, tmp_path / "empty_hub")
    capsys.readouterr()
    assert run_vqa(*args)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    repo = "timm/vit_base_patch16_clip_224.openai"
    assert err[-1].startswith(f"vqa: error: open_clip backbone: pretrained 'ViT-B-16 openai' (hub id {repo}) "
                              f"is not in the Hugging Face cache {empty}")
    use_hub_cache(monkeypatch, paper_hub_cache(tmp_path / "hub", "videodistill"))
    assert run_vqa(*args)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    parts = ["text_encoder", "sampler", "fusion"]
    assert err[-1].startswith(f"vqa: error: init_parts {parts} is set but init_from")
    assert not list(tmp_path.rglob("*.ckpt"))
