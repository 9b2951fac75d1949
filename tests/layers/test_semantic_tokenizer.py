"""The tokenizer's encoder (E-ViLM section 3.3): the ViT built here, unchanged; a timm ViT by name, its
class token dropped and its pretrained mean and std used; its pretrained weights read from the Hugging
Face hub cache as timm loads them, and not looked up where weights are loaded later.

The named ViT of the fast tests is timm's ``test_vit`` (a class token, patch 16, width 64): its tag
``r160_in1k`` names the hub repository ``timm/test_vit.r160_in1k``, which the tests fill with random
weights saved at the tag's 160 px (a 10 x 10 position table). The paper's ViT (OpenAI CLIP's ViT-B/32,
88M parameters) is built on the meta device here; ``tests/recipes/test_paper_scale.py`` loads it (slow).
Nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    EVILM_TOKENIZER_VIT,
    TAGGER_TEST_REPO,
    TAGGER_TEST_VIT,
    tagger_vit_repository,
    use_hub_cache,
)
from safetensors.torch import load_file

from vqa_components import weights
from vqa_components.errors import ConfigError
from vqa_components.layers.semantic_tokenizer import PIXEL_MEAN, PatchEncoder, VideoTagger

TEST_VIT, TEST_REPO = TAGGER_TEST_VIT, TAGGER_TEST_REPO
#: OpenAI CLIP's pixel statistics (timm.data.OPENAI_CLIP_MEAN / _STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture
def vit_file(tmp_path, monkeypatch):
    """The hub cache, offline, holding ``test_vit``'s repository with random weights; the weights file."""
    return tagger_vit_repository(use_hub_cache(monkeypatch, tmp_path / "hub"))


def test_without_a_model_name_the_encoder_is_the_class_token_free_vit_it_always_was():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, num_classes=0, global_pool="", class_token=False,
                            embed_dim=16, depth=1, num_heads=2, mlp_ratio=4.0)  # fmt: skip
    proj = torch.nn.Linear(16, 8)
    torch.manual_seed(0)
    enc = PatchEncoder(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, code_dim=8)
    expected = {f"vit.{k}": v for k, v in vit.state_dict().items()}
    expected.update({f"proj.{k}": v for k, v in proj.state_dict().items()})
    assert expected.keys() == enc.state_dict().keys()
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in expected.items())
    assert enc.num_prefix_tokens == 0 and enc.pixel_mean == PIXEL_MEAN and not hasattr(enc, "weights_source")
    with torch.device("meta"):  # left out: ViT-B/32 at 256 px, as the defaults always were
        default = VideoTagger().encoder
    heads = default.vit.blocks[0].attn.num_heads
    assert (default.grid, default.embed_dim, len(default.vit.blocks), heads) == ((8, 8), 768, 12, 12)


def test_a_named_vit_reads_the_tags_hub_file_as_timm_loads_it(vit_file):
    import timm
    from timm.layers import resample_abs_pos_embed

    enc = PatchEncoder(model_name=TEST_VIT, pretrained=True, img_size=64, code_dim=8)
    assert enc.weights_source == f"hf-hub:{TEST_REPO}/model.safetensors"
    saved = load_file(str(vit_file))
    loaded = enc.vit.state_dict()
    assert set(saved) - set(loaded) == {"head.weight", "head.bias"} and set(loaded) <= set(saved)
    for key, value in loaded.items():
        if key != "pos_embed":
            assert torch.equal(value, saved[key]), key
    # the tag's 10 x 10 table (160 px) resampled to the 4 x 4 grid of 64 px frames, the class token's row kept
    assert saved["pos_embed"].shape == (1, 101, 64) and loaded["pos_embed"].shape == (1, 17, 64)
    resampled = resample_abs_pos_embed(saved["pos_embed"], new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(loaded["pos_embed"], resampled)
    # ... which is what timm's own loader makes of the same file
    reference = timm.create_model(TEST_VIT, pretrained=True, pretrained_cfg_overlay={"file": str(vit_file)},
                                  img_size=64, num_classes=0, global_pool="").state_dict()  # fmt: skip
    assert reference.keys() == loaded.keys()
    assert all(torch.equal(reference[k], v) for k, v in loaded.items())


def test_a_named_vit_drops_its_class_token_and_normalises_with_its_pretrained_mean_and_std(vit_file):
    enc = PatchEncoder(model_name=TEST_VIT, pretrained=True, img_size=64, code_dim=8).eval()
    assert enc.num_prefix_tokens == 1 and enc.grid == (4, 4) and enc.patch_size == 16
    assert enc.pixel_mean == enc.pixel_std == (0.5, 0.5, 0.5)  # test_vit's pretrained statistics
    video = torch.rand(1, 2, 3, 64, 64)
    z = enc(video)
    assert z.shape == (1, 2, 4, 4, 8)
    tokens = enc.vit.forward_features((video[0] - 0.5) / 0.5)
    assert tokens.shape == (2, 17, 64)  # the class token, then 16 patches
    torch.testing.assert_close(z, enc.proj(tokens[:, 1:]).reshape(1, 2, 4, 4, 8))


def test_the_papers_vit_on_the_meta_device_is_clip_s_and_looks_nothing_up(tmp_path, monkeypatch):
    cache = use_hub_cache(monkeypatch, tmp_path / "empty_hub")
    with torch.device("meta"):
        block = {"model_name": EVILM_TOKENIZER_VIT, "pretrained": True, "img_size": 256, "patch_size": 32}
        enc = VideoTagger(block).encoder
    assert (enc.grid, enc.embed_dim, enc.num_prefix_tokens, len(enc.vit.blocks)) == ((8, 8), 768, 1, 12)
    assert isinstance(enc.vit.norm_pre, torch.nn.LayerNorm)  # CLIP's pre-norm
    assert (enc.pixel_mean, enc.pixel_std) == (CLIP_MEAN, CLIP_STD)
    assert enc.weights_source == "hf-hub:timm/vit_base_patch32_clip_224.openai"
    assert list(cache.iterdir()) == []


def test_inside_weights_loaded_later_the_cache_is_not_read(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "empty_hub")
    with weights.weights_loaded_later():
        enc = PatchEncoder(model_name=TEST_VIT, pretrained=True, img_size=32, code_dim=8)
    assert enc.weights_source == f"hf-hub:{TEST_REPO}"
    with pytest.raises(ConfigError):  # outside it, the same build reads the (empty) cache
        PatchEncoder(model_name=TEST_VIT, pretrained=True, img_size=32, code_dim=8)


def test_missing_from_the_cache_offline_is_one_line_naming_the_id_and_the_command(tmp_path, monkeypatch):
    cache = use_hub_cache(monkeypatch, tmp_path / "empty_hub")
    with pytest.raises(ConfigError) as info:
        VideoTagger({"model_name": TEST_VIT, "pretrained": True, "img_size": 32, "num_codes": 16})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"tagger: pretrained weights {TEST_VIT!r} (hub id {TEST_REPO}) is not in the "
                              f"Hugging Face cache {cache} and offline (HF_HUB_OFFLINE=1)")  # fmt: skip
    assert f"run `hf download {TEST_REPO} model.safetensors`" in message


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"model_name": TEST_VIT, "embed_dim": 768, "patch_size": 16},
         (r"^tagger: embed_dim 768 contradicts model_name 'test_vit.r160_in1k' \(patch_size 16, "
          r"embed_dim 64, depth 6, num_heads 2, mlp_ratio 3.0\); leave them out")),
        ({"pretrained": True}, "^tagger: pretrained needs model_name"),
        ({"model_name": "vit_base_patch32_clip_244.openai"}, "^tagger: unknown timm model"),
        ({"model_name": "resnet18"}, "^tagger: model_name 'resnet18' is not a timm VisionTransformer"),
    ],
)
def test_what_cannot_work_is_one_line(config, match, tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "empty_hub")
    with pytest.raises(ConfigError, match=match) as info:
        VideoTagger({"img_size": 32, "num_codes": 16, "code_dim": 8, **config})
    assert "\n" not in str(info.value)


def test_a_named_vit_may_repeat_its_own_shape():
    enc = VideoTagger({"model_name": TEST_VIT, "img_size": 32, "patch_size": 16, "embed_dim": 64, "depth": 6,
                       "num_heads": 2, "mlp_ratio": 3.0, "num_codes": 16, "code_dim": 8}).encoder  # fmt: skip
    assert (enc.grid, enc.embed_dim, enc.mlp_ratio) == ((2, 2), 64, 3.0)
    assert not hasattr(enc, "weights_source")  # not pretrained: random weights
