"""The paper recipes carry the values their sources state, each pinned here beside the quoted source.

Sources (plain text in ../shared/papers/): E-ViLM (Fang et al., 2023) ``e-vilm.txt``; the
co-tokenization blog post (Piergiovanni and Angelova, Google Research, 2022)
``cotokenization-blog.txt``; VideoDistill (Zou et al., 2024) ``videodistill.txt``. Only values a
source states are pinned; the recipes' own choices for what it leaves open are not. The recipes are
read as YAML (nothing is built); where a recipe leaves a value to the part's default, the default is
read from the part's signature.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def recipes(pattern: str) -> list[Path]:
    found = sorted(RECIPES.glob(pattern))
    assert found, pattern
    return found


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(RECIPES)) for p in paths]


def objective(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [o for o in cfg["model"]["objectives"] if o["name"] == name]
    return found


def setting(spec: dict[str, Any], arg: str, kind: str) -> Any:
    """``spec[arg]``, or the default of ``arg`` in the registered part ``spec["name"]`` of ``kind``."""
    if arg in spec:
        return spec[arg]
    from vqa_components.registry import get_registry

    default = inspect.signature(get_registry(kind).get(spec["name"])).parameters[arg].default
    assert default is not inspect.Parameter.empty, f"{spec['name']}.{arg} has no default"
    return default


def tagger_setting(tagger: dict[str, Any], field: str) -> Any:
    from vqa_components.layers.semantic_tokenizer import TaggerConfig

    return tagger.get(field, {f.name: f.default for f in dataclasses.fields(TaggerConfig)}[field])


def lr_and_decay(cfg: dict[str, Any]) -> tuple[str, float, float]:
    opt = cfg["model"]["optimizer"]
    return opt["class_path"], float(opt["init_args"]["lr"]), float(opt["init_args"]["weight_decay"])


# ====================================================================== E-ViLM

EVILM = recipes("evilm/*.yaml") + recipes("evilm/ablations/*.yaml")
EVILM_MODELS = [p for p in EVILM if "backbone" in load(p)["model"]]  # all but the stage-1 tokenizers
EVILM_TOKENIZERS = [p for p in EVILM if any(o["name"] == "svq" for o in load(p)["model"]["objectives"])]


@pytest.mark.parametrize("path", EVILM, ids=ids(EVILM))
def test_evilm_four_frames_of_256_pixels(path):
    data = load(path)["data"]["dataset_args"]
    # "For VL pre-training, we sparsely sample 4 video frames per video and resize them into 256x256
    # after random augmentation." "For downstream tasks, we stick to the sparsely sampled 4 frames"
    # (section 4.1, Training); the tokenizer is trained "Same as the pre-training phase".
    assert data["num_frames"] == 4
    assert (data["resize_short"], data["crop_size"]) == (256, 256)


def test_evilm_recipe_lists_are_complete():
    assert len(EVILM_MODELS) == 10 and ids(EVILM_TOKENIZERS) == [
        "evilm/tokenizer.yaml",
        "evilm/ablations/tokenizer_bce.yaml",
    ]


@pytest.mark.parametrize("path", EVILM_MODELS, ids=ids(EVILM_MODELS))
def test_evilm_model_is_edgenext_small_tiny_bert_and_a_4_block_decoder_of_384(path):
    model = load(path)["model"]
    # "our visual encoder (EdgeNext_small) only consumes 1.26G FLOPs for one 256x256 frame" (section 4.1)
    backbone = model["backbone"]
    assert backbone["name"] == "timm" and backbone["model_name"].partition(".")[0] == "edgenext_small"
    # "we adopt a tiny BERT variation with decreased hidden size (128) and fewer attention heads per layer (4)"
    text = model["text_encoder"]
    assert text["name"] == "bert"
    assert (
        setting(text, "hidden_size", "text_encoder") == 128
        and setting(text, "num_heads", "text_encoder") == 4
    )
    assert text.get("dim", "default") is None  # the fusion reads BERT's own width ...
    assert model["fusion"]["text_dim"] == 128  # ... of 128
    # "Our cross-modal decoder is composed of 4 transformer blocks with decreased hidden size (384)."
    fusion = model["fusion"]
    assert fusion["name"] == "merged_transformer"
    assert (fusion["num_layers"], fusion["dim"], fusion["max_frames"]) == (4, 384, 4)
    # eq. 2 adds no video positions; the per-frame embedding is ours, written out where a reader sees it
    assert fusion["frame_positions"] is True


@pytest.mark.parametrize("path", EVILM_TOKENIZERS, ids=ids(EVILM_TOKENIZERS))
def test_evilm_tokenizer_codebook_decoder_and_training(path):
    cfg = load(path)
    svq = objective(cfg, "svq")
    # "Our semantic codebook contains 9,420 learnable prototype embedding in the dimension of 32
    # initialized randomly." (section 4.1)
    assert (tagger_setting(svq["tagger"], "num_codes"), tagger_setting(svq["tagger"], "code_dim")) == (
        9420,
        32,
    )
    # "a ViT [16] architecture pre-trained by [59]" (section 3.3; [59] is Radford et al. 2021, OpenAI's
    # CLIP): CLIP's ViT-B/32 with OpenAI's weights, built as OpenAI trained it (QuickGELU), its 32 px
    # patches giving a 256x256 frame the 8x8 grid of EdgeNeXt's last stage that MVM masks
    vit = "vit_base_patch32_clip_quickgelu_224.openai"
    assert (svq["tagger"]["model_name"], svq["tagger"]["pretrained"]) == (vit, True)
    assert (svq["tagger"]["img_size"], svq["tagger"]["patch_size"]) == (256, 32)
    # no dead-code restarts: the paper's quantizer has none (eq. 7 alone trains the codebook); written out
    assert svq["tagger"]["restart_every"] == 0
    # eq. 7 has no weight on the commitment term
    assert tagger_setting(svq["tagger"], "beta") == 1.0
    # "Our tokenizer also includes a decoder which consists of 8 layers of transformer architecture"
    assert setting(svq, "decoder_depth", "objective") == 8
    # eq. 6's focal loss (Table 6's L_TOKEN row); the BCE tokenizer is Table 6's T_{L_BCE} row
    assert svq["word_loss"] == ("bce" if "bce" in path.name else "focal")
    # "we trained the video tokenizer on WebViD for 10 epochs with initial learning rate 2e-4"
    # (WebVid-2.5M, section 4.1: the release whose files are named results_2M_*)
    assert cfg["trainer"]["max_epochs"] == 10 and lr_and_decay(cfg)[1] == 2e-4
    assert (cfg["data"]["dataset"], cfg["data"]["dataset_args"]["cut"]) == ("webvid", "2M")


def test_evilm_pretraining_objectives_mask_ratios_and_optimizer():
    cfg = load(RECIPES / "evilm/pretrain.yaml")
    # eq. 8: L = L_MLM + L_VTM + L_MVM, unweighted
    assert [o["name"] for o in cfg["model"]["objectives"]] == ["mlm", "vtm", "mvm"]
    assert all(setting(o, "weight", "objective") == 1.0 for o in cfg["model"]["objectives"])
    mvm = objective(cfg, "mvm")
    # "We adopt block-wise masking [6] with masking ratio 40%."
    assert setting(mvm, "mask_ratio", "objective") == 0.4
    # stage 2's tagger is stage 1's: the same codebook of 9,420 x 32, no restarts
    tokenizer = objective(load(RECIPES / "evilm/tokenizer.yaml"), "svq")["tagger"]
    assert mvm["tagger"] == tokenizer
    assert mvm["tagger"]["restart_every"] == 0
    # Fig. 3: EdgeNeXt "encodes the masked video frames", and the three losses read that one pass
    assert cfg["model"]["masked_pass"] == "single"
    # "For MLM, we randomly mask 15% of the words during training."
    assert setting(objective(cfg, "mlm"), "mask_prob", "objective") == 0.15
    # "We use optimizer adamW [50] with an initial learning rate of 1e-4, weight decay of 0.01 during
    # pre-training and train E-ViLM on WebViD for 20 epochs"
    assert lr_and_decay(cfg) == ("torch.optim.AdamW", 1e-4, 0.01)
    assert cfg["trainer"]["max_epochs"] == 20
    assert (cfg["data"]["dataset"], cfg["data"]["dataset_args"]["cut"]) == ("webvid", "2M")


def test_evilm_table5_ablations_drop_pretraining_objectives():
    # Table 5's rows: no pre-training; VTM; VTM + MLM; (VTM + MLM + MVM = pretrain.yaml)
    names = {
        p.name: [o["name"] for o in load(p)["model"]["objectives"]]
        for p in recipes("evilm/ablations/pretrain_*.yaml")
    }
    assert names == {"pretrain_vtm.yaml": ["vtm"], "pretrain_vtm_mlm.yaml": ["mlm", "vtm"]}
    assert "init_parts" not in load(RECIPES / "evilm/ablations/no_pretraining.yaml")["model"]


# ====================================================================== co-tokenization

#: "a low-resolution high frame-rate, input video stream (with 32 frames-per-second and spatial
#: resolution 64x64, which we denote as 32x64x64); a high-resolution, low frame-rate video (8x224x224);
#: and one in-between (16x112x112)" (blog, "Multi-stream Video Inputs")
COTOK_STREAMS = {(32, 64), (16, 112), (8, 224)}
COTOK = recipes("cotok/*.yaml") + recipes("cotok/ablations/*.yaml")
COTOK_THREE = [p for p in COTOK if not p.name.startswith("streams_")]  # the streams_* ablations drop some


def streams(cfg: dict[str, Any]) -> list[tuple[int, int]]:
    return [(s["num_frames"], s["frame_size"]) for s in cfg["data"]["dataset_args"]["streams"]]


@pytest.mark.parametrize("path", COTOK, ids=ids(COTOK))
def test_cotok_streams_are_the_blogs_each_with_its_own_backbone(path):
    cfg = load(path)
    got = streams(cfg)
    if path in COTOK_THREE:
        # "Our approach utilizes three video streams at different resolutions and frame-rates"
        assert len(got) == 3 and set(got) == COTOK_STREAMS
    else:  # the stream ablations keep some of the paper's streams
        assert len(got) < 3 and set(got) < COTOK_STREAMS and len(set(got)) == len(got)
    # "processing different scale videos with independent backbone models for each"
    backbone = cfg["model"]["backbone"]
    assert backbone["name"] == "multi_stream" and len(backbone["backbones"]) == len(got)
    assert len(cfg["model"]["fusion"]["video_dim"]) == len(got)
    # "At the last step the features are input to a decoder that generates the text output."
    assert cfg["model"]["head"]["name"] == "text_decoder"


def test_cotok_lists_and_the_datasets_of_the_blog():
    assert len(COTOK_THREE) == 11 and len(COTOK) == 13
    # "we use the videos automatically annotated with text based on speech recognition, using the
    # HowTo100M dataset"
    pretrain = load(RECIPES / "cotok/pretrain.yaml")
    assert "howto100m" in pretrain["data"]["dataset_args"]["root"].lower()
    # "three main VideoQA benchmarks, MSRVTT-QA, MSVD-QA and IVQA"
    finetuned = {load(p)["data"]["dataset"] for p in recipes("cotok/finetune_*.yaml")}
    assert finetuned == {"msrvtt_qa", "msvd_qa", "ivqa"}
    # "we pre-train the model before fine-tuning it on the individual VideoQA datasets"
    assert all("init_parts" in load(p)["model"] for p in recipes("cotok/finetune_*.yaml"))


# ====================================================================== VideoDistill

VD = recipes("videodistill/*.yaml") + recipes("videodistill/ablations/*.yaml")


@pytest.mark.parametrize("path", VD, ids=ids(VD))
def test_videodistill_clip_towers_frames_and_optimizer(path):
    cfg = load(path)
    model, data = cfg["model"], cfg["data"]["dataset_args"]
    # "In the video branch, we adopt CLIP-ViTB/16 [54] as the frame encoder." "We adopt the pretrained
    # image-language encoder CLIP [54] with frozen parameters in the visual branch" (appendix B, 3.1)
    assert model["backbone"]["name"] == "open_clip" and model["backbone"]["model_name"] == "ViT-B-16"
    assert model["backbone"]["frozen"] is True and "backbone" in model["freeze"]
    # "In the text branch, we utilize the text encoder from CLIP with a maximum sequence length of 77."
    text = model["text_encoder"]
    assert (text["name"], text["model_name"], text["context_length"]) == ("open_clip", "ViT-B-16", 77)
    # "A text is first tokenized and then fed into the pretrained text encoder of CLIP"; [54] is Radford et
    # al. 2021, OpenAI's CLIP: both towers start from its weights (open_clip's tag openai)
    assert model["backbone"]["pretrained"] == text["pretrained"] == "openai"
    # "We resize all video clips (as well as downstream videos) to 256p while preserving the aspect
    # ratio" ... "We randomly sample 100 frames as input during pretraining and evenly sample 100
    # frames for downstream tasks." ... "random crop a 224x224 region" (appendix B)
    assert (data["resize_short"], data["crop_size"], data["num_frames"]) == (256, 224, 100)
    assert data["frame_sampling"] == ("random" if path.name == "pretrain.yaml" else "uniform")
    # "For all experiments, we use AdamW optimizer with a learning rate of 3e-5 and a weight decay of 1e-3."
    assert lr_and_decay(cfg) == ("torch.optim.AdamW", 3e-5, 1e-3)


#: "FS-Blocks and VB-Blocks have L=3 layers, a hidden size of D=1024. The number of attention heads
#: equals 8 for all LA-Gates, self-attention layers, and spatial-temporal layers." "We sparsely sample
#: K=16 frames from 100 densely sampled frames" (appendix B)
#: The sampler and the refinement blocks are built on the LA-Gate (section 3.2); "models with K>4 allow
#: duplicate selection, which means important frames can appear more than once" (appendix E).
SAMPLER = {
    "name": "gumbel_topk", "num_frames": 16, "max_frames": 100, "num_layers": 3, "dim": 1024, "num_heads": 8,
    "gate": "la_gate", "allow_repeats": True,
}  # fmt: skip
REFINEMENT = {"name": "vision_refinement", "num_layers": 3, "dim": 1024, "num_heads": 8, "gate": "la_gate"}
#: Table 4 (section 4.6): "(a) we remove the two modules and apply evenly sampled 16 frames as input and a
#: 3-layer transformer to fuse the vision and language. (b) we remove differentiable sparse sampling and
#: apply evenly sampled 16 frames as input. (c) we replace the hard sampling in SS with soft sampling
#: [...] (d) we remove vision refinement and apply a 3-layer transformer [...] (e) we replace LA-Gates in
#: both modules with cross-attention layers."
UNIFORM_16 = {"name": "uniform", "num_frames": 16}
TRANSFORMER_3 = {"name": "concat_self_attention", "num_layers": 3, "dim": 1024, "num_heads": 8}
TABLE4 = {
    "a_baseline.yaml": (UNIFORM_16, TRANSFORMER_3),
    "b_uniform_sampling.yaml": (UNIFORM_16, REFINEMENT),
    "c_soft_sampling.yaml": (
        {k: v for k, v in SAMPLER.items() if k != "allow_repeats"} | {"name": "soft"},
        REFINEMENT,
    ),
    "d_no_refinement.yaml": (SAMPLER, TRANSFORMER_3),
    "e_cross_attention.yaml": (
        {**SAMPLER, "gate": "cross_attention"},
        {**REFINEMENT, "gate": "cross_attention"},
    ),
    "f_full.yaml": (SAMPLER, REFINEMENT),
}


def part_matches(spec: dict[str, Any], expected: dict[str, Any], kind: str) -> bool:
    return all(setting(spec, k, kind) == v for k, v in expected.items())


@pytest.mark.parametrize("path", VD, ids=ids(VD))
def test_videodistill_sampler_and_refinement(path):
    model = load(path)["model"]
    sampler, fusion = TABLE4.get(path.name, (SAMPLER, REFINEMENT))
    assert part_matches(model["sampler"], sampler, "sampler")
    assert part_matches(model["fusion"], fusion, "fusion")


def test_videodistill_table4_has_its_six_rows():
    assert sorted(p.name for p in recipes("videodistill/ablations/*.yaml")) == sorted(TABLE4)


def test_videodistill_pretraining():
    cfg = load(RECIPES / "videodistill/pretrain.yaml")
    # eq. 10: L_total = L_VTM + L_VG-MLM + L_CL, unweighted
    objectives = cfg["model"]["objectives"]
    assert [o["name"] for o in objectives] == ["vtm", "vg_mlm", "contrastive"]
    assert all(setting(o, "weight", "objective") == 1.0 for o in objectives)
    # "we randomly exchange the annotations of two input pairs (matched) in a mini-batch with a
    # probability of 0.5" (section 3.5)
    assert setting(objective(cfg, "vtm"), "swap_prob", "objective") == 0.5
    # "tau is a temperature coefficient equals 0.07 in this paper" (eq. 8)
    assert objective(cfg, "contrastive")["temperature"] == 0.07
    # "we employ a linear decay learning rate schedule with a warm-up strategy. We pretrain VideoDistill
    # [...] for 2 epochs" (appendix B)
    assert cfg["model"]["scheduler"]["class_path"].endswith("LinearWarmupDecay")
    assert cfg["trainer"]["max_epochs"] == 2


def test_videodistill_finetuning_heads_and_starting_points():
    for path in recipes("videodistill/finetune_*.yaml"):
        cfg = load(path)
        head = cfg["model"]["head"]
        # "train a two-layer MLP classification head over all answer candidates with a cross-entropy
        # loss on the top of visual representation v_cls*" (appendix C)
        assert head["name"] == "answer_classifier" and setting(head, "hidden_dim", "head") != 0
        assert [o["name"] for o in cfg["model"]["objectives"]] == ["answer_cross_entropy"]
        # AGQA (Table 1) and EgoTaskQA (Table 2: "†denotes training from scratch") are trained without
        # the pretraining; MSRVTT-QA and MSVD-QA (Tables 5, 6) fine-tune the pretrained model
        from_scratch = cfg["data"]["dataset"] in ("agqa", "egotaskqa")
        assert ("init_parts" in cfg["model"]) is not from_scratch, path.name
    # "For open-ended datasets MSRVTT-QA and MSVD-QA, EgoTaskQA, and AGQA" (appendix C)
    datasets = {load(p)["data"]["dataset"] for p in recipes("videodistill/finetune_*.yaml")}
    assert datasets == {"msrvtt_qa", "msvd_qa", "egotaskqa", "agqa"}
