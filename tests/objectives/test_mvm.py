"""mvm (E-ViLM eq. 3): targets from the frozen tagger on unmasked frames, masked pixels through the model,
a tagger that stays frozen and in eval mode, stage-1 weights that fit it, and helpful errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vqa_components.objectives.mvm as mvm_module
from vqa_components import create, weights
from vqa_components.interfaces import Backbone, ConfigError, Fusion, FusionOutput, VideoFeatures
from vqa_components.layers.masking import block_mask, mask_pixels
from vqa_components.layers.transformer import TransformerBlock
from vqa_components.model import VideoQAModel
from vqa_components.objectives.mvm import MaskedVideoModeling
from vqa_components.objectives.svq import SemanticVQ
from vqa_components.registry import OBJECTIVES

D = 16
#: the encoder + quantizer arguments shared by stage 1 (svq) and stage 2 (mvm): 32 px frames, 4 x 4 codes
TAGGER = {"num_codes": 64, "code_dim": 8, "img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1,
          "num_heads": 2}  # fmt: skip


class GridBackbone(Backbone):
    """Patchify conv: one token per ``patch x patch`` pixel block, with its grid (optionally not)."""

    def __init__(self, patch: int = 8, give_grid: bool = True, pad_last_frame: bool = False) -> None:
        super().__init__()
        self.out_dim = D
        self.conv = nn.Conv2d(3, D, patch, stride=patch)
        self.give_grid = give_grid
        self.pad_last_frame = pad_last_frame

    def forward(self, video):
        b, t = video.shape[:2]
        x = self.conv(video.flatten(0, 1))
        grid = tuple(x.shape[-2:])
        tokens = x.flatten(2).transpose(1, 2).reshape(b, t, grid[0] * grid[1], D)
        frame_mask = None
        if self.pad_last_frame:
            frame_mask = torch.ones(b, t, dtype=torch.bool)
            frame_mask[:, -1] = False
        return VideoFeatures(tokens=tokens, cls=tokens.mean(2), frame_mask=frame_mask,
                             grid=grid if self.give_grid else None)  # fmt: skip


class TokenFusion(Fusion):
    """One self-attention block over [video tokens; text tokens]; keeps one output per video token."""

    def __init__(self, give_video_tokens: bool = True) -> None:
        super().__init__()
        self.out_dim = D
        self.block = TransformerBlock(D, 2)
        self.give_video_tokens = give_video_tokens

    def forward(self, video, text):
        v = video.flat_tokens()
        pad = torch.cat([torch.zeros(v.shape[:2], dtype=torch.bool), ~text.mask], 1)
        y = self.block(torch.cat([v, text.tokens], 1), key_padding_mask=pad)
        extras = {"video_tokens": y[:, : v.shape[1]]} if self.give_video_tokens else {}
        return FusionOutput(pooled=y.mean(1), tokens=y, extras=extras)


def _model(backbone=None, fusion=None, **kwargs) -> tuple[VideoQAModel, MaskedVideoModeling]:
    torch.manual_seed(0)
    obj = MaskedVideoModeling(tagger=TAGGER, **kwargs)
    model = VideoQAModel(
        backbone=backbone or GridBackbone(),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=fusion or TokenFusion(),
        head=create("head", "answer_classifier", in_dim=D, num_answers=3),
        objectives=[obj],
        text_field="caption",
    )
    obj.attach(model)  # HEAD^V from the fusion's width (a no-op if the model attached it already)
    obj.generator = torch.Generator().manual_seed(3)
    return model, obj


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"video": torch.randint(0, 256, (2, 3, 3, 32, 32), generator=g, dtype=torch.uint8),
            "caption": ["a red ball rolls left", "a lamp flashes"], "video_key": ["k0", "k1"]}  # fmt: skip


class _Refuse:
    """A feature cache that must not be read: mvm's pixels are masked."""

    def encode(self, *args, **kwargs):
        raise AssertionError("mvm read the feature cache")


def _spy_cross_entropy(monkeypatch) -> list:
    calls = []
    real = F.cross_entropy

    def spy(logits, target, *args, **kwargs):
        calls.append((logits.detach(), target.clone()))
        return real(logits, target, *args, **kwargs)

    monkeypatch.setattr(mvm_module.F, "cross_entropy", spy)
    return calls


def test_registered_with_a_frozen_tagger_and_a_head_from_the_fusion():
    assert OBJECTIVES.get("mvm") is MaskedVideoModeling
    model, obj = _model()
    assert obj.head.in_features == D and obj.head.out_features == 64
    assert all(not p.requires_grad for p in obj.tagger.parameters())
    optimizer = model.configure_optimizers()
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in obj.tagger.parameters()}
    assert {id(p) for p in obj.head.parameters()} <= in_optimizer
    with pytest.raises(ConfigError, match="in_dim=8 but the fusion has out_dim=16"):
        MaskedVideoModeling(8, tagger=TAGGER).attach(model)


def test_targets_are_the_tagger_s_codes_of_the_unmasked_video_at_the_masked_positions(monkeypatch):
    model, obj = _model()
    model.feature_cache = _Refuse()  # the masked pixels must bypass the cache
    batch = _batch()
    seen_pixels, fused_out = [], []
    model.backbone.register_forward_pre_hook(lambda m, args: seen_pixels.append(args[0].clone()))
    model.fusion.register_forward_hook(lambda m, args, out: fused_out.append(out))
    calls = _spy_cross_entropy(monkeypatch)
    res = obj(model, batch, None)

    video = batch["video"].float() / 255
    mask = block_mask(2, 3, (4, 4), 0.4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(seen_pixels[0], mask_pixels(video, mask))  # the backbone saw the masked frames
    codes = obj.tagger(video)
    logits, target = calls[0]
    assert torch.equal(target, codes.flatten(1)[mask.flatten(1)])  # codes of the unmasked frames
    assert len(target) == 2 * 3 * round(0.4 * 16)
    masked_codes = obj.tagger(mask_pixels(video, mask))
    assert (masked_codes[mask] != codes[mask]).any()  # (labelling the masked frames would differ)
    # eq. 3: the mean CE of HEAD^V on the fused video tokens at the masked positions
    tokens = fused_out[0].extras["video_tokens"]
    expected_logits = obj.head(tokens[mask.flatten(1)]).detach()
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(res["loss"].detach(), F.cross_entropy(expected_logits, target))
    assert res["acc"] == (expected_logits.argmax(-1) == target).float().mean()


def test_padded_frames_are_no_targets(monkeypatch):
    model, obj = _model(backbone=GridBackbone(pad_last_frame=True))
    calls = _spy_cross_entropy(monkeypatch)
    obj(model, _batch(), None)
    assert len(calls[0][1]) == 2 * 2 * round(0.4 * 16)  # 2 real frames of 3
    one_frame = {**_batch(), "video": _batch()["video"][:, :1]}  # its only frame is padding
    res = obj(model, one_frame, None)
    res["loss"].backward()
    assert res["loss"] == 0 and obj.head.weight.grad is not None  # no target, every parameter in the graph


def test_the_tagger_gets_no_gradient_stays_in_eval_and_keeps_its_weights_in_training_steps():
    model, obj = _model()
    model.log = lambda *args, **kwargs: None
    before = {k: v.clone() for k, v in obj.tagger.state_dict().items()}
    head_before = obj.head.weight.detach().clone()
    optimizer = model.configure_optimizers()
    model.train()
    assert obj.training and model.backbone.training
    assert not any(m.training for m in obj.tagger.modules())
    for _ in range(2):
        loss = model.training_step(_batch(), 0)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in obj.tagger.parameters())
        assert obj.head.weight.grad is not None and obj.head.weight.grad.abs().sum() > 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in obj.tagger.state_dict().items())
    assert not torch.equal(head_before, obj.head.weight)
    model.train()
    assert not obj.tagger.training


def test_the_tagger_gives_the_same_codes_after_save_and_reload(tmp_path):
    _, obj = _model()
    video = torch.rand(2, 3, 3, 32, 32)
    torch.save(obj.tagger.state_dict(), tmp_path / "tagger.pt")
    torch.manual_seed(1)
    other = MaskedVideoModeling(tagger=TAGGER)
    assert not torch.equal(other.tagger(video), obj.tagger(video))
    other.tagger.load_state_dict(torch.load(tmp_path / "tagger.pt", weights_only=True))
    assert torch.equal(other.tagger(video), obj.tagger(video))


def _stage2_model(tagger, patch: int = 8, **kwargs) -> VideoQAModel:
    """A stage-2 model whose MVM tagger (``tagger``'s block) is frozen, to take stage 1's weights."""
    return VideoQAModel(
        backbone=GridBackbone(patch=patch),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=TokenFusion(),
        head=create("head", "answer_classifier", in_dim=D, num_answers=3),
        objectives=[MaskedVideoModeling(tagger=tagger)],
        text_field="caption",
        freeze=["objectives.mvm.tagger"],
        **kwargs,
    )


def test_stage_2_loads_the_stage_1_tagger_with_one_prefix_rename(tmp_path):
    """svq's tokenizer.tagger.{encoder,quantizer} -> mvm's tagger.{encoder,quantizer}, through the model's
    init_from + init_parts + init_rename: the same keys, and the same codes as stage 1's tagger."""
    torch.manual_seed(2)
    text = create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2)
    stage1 = VideoQAModel(
        text_encoder=text,
        objectives=[SemanticVQ(decoder_dim=16, decoder_depth=1, decoder_heads=2, tagger=TAGGER)],
        text_field="caption",
    )
    torch.save({"state_dict": stage1.state_dict()}, tmp_path / "stage1.ckpt")
    tagger1 = stage1.objectives["svq"].tokenizer.tagger
    stage2, _ = _model()
    assert {k.replace("objectives.svq.tokenizer.tagger.", "objectives.mvm.tagger.", 1)
            for k in stage1.state_dict() if k.startswith("objectives.svq.tokenizer.tagger.")} == {
            k for k in stage2.state_dict() if k.startswith("objectives.mvm.tagger.")}  # fmt: skip

    def stage2_model(**kwargs) -> VideoQAModel:
        return _stage2_model(TAGGER, **kwargs)

    assert weights.random_frozen_parts(stage2_model()) == ["objectives.mvm.tagger"]  # fit refuses a random tagger
    torch.manual_seed(3)
    loaded = stage2_model(
        init_from=str(tmp_path / "stage1.ckpt"),
        init_parts=["objectives.mvm.tagger"],
        init_rename={"objectives.mvm.tagger": "objectives.svq.tokenizer.tagger"},
    )
    assert weights.random_frozen_parts(loaded) == []  # the frozen tagger has stage 1's weights
    video = torch.rand(2, 3, 3, 32, 32)
    assert torch.equal(loaded.objectives["mvm"].tagger(video), tagger1(video))
    assert not torch.equal(stage2.objectives["mvm"].tagger(video), tagger1(video))  # (a random one differs)


def test_a_backbone_without_the_tagger_s_grid_is_a_config_error():
    model, obj = _model(backbone=GridBackbone(give_grid=False))
    with pytest.raises(ConfigError, match=r"gives no token grid \(VideoFeatures.grid is None\)"):
        obj(model, _batch(), None)
    model, obj = _model(backbone=GridBackbone(patch=16))
    with pytest.raises(ConfigError, match="2x2 token grid but the tagger codes a 4x4 grid"):
        obj(model, _batch(), None)


def test_a_fusion_without_video_tokens_is_a_config_error():
    model, obj = _model(fusion=TokenFusion(give_video_tokens=False))
    with pytest.raises(ConfigError, match=r"TokenFusion gives no extras\['video_tokens'\]"):
        obj(model, _batch(), None)


def test_stage_2_builds_stage_1_s_named_vit_without_reading_its_weights_and_loads_stage_1_s(
    tmp_path, monkeypatch
):
    """The same ``tagger:`` block, with a timm ViT by name and ``pretrained: true``, in both stages: stage 1
    reads the ViT's pretrained weights from the hub cache; stage 2 builds the same shape, reads nothing
    (its cache is empty: no error) and takes stage 1's tagger, trained on, through ``init_from``."""
    from helpers import TAGGER_TEST_VIT, tagger_vit_repository, use_hub_cache

    block = {"model_name": TAGGER_TEST_VIT, "pretrained": True, "img_size": 32, "num_codes": 64,
             "code_dim": 8}  # fmt: skip
    tagger_vit_repository(use_hub_cache(monkeypatch, tmp_path / "hub"))
    torch.manual_seed(2)
    stage1 = VideoQAModel(
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        objectives=[SemanticVQ(decoder_dim=16, decoder_depth=1, decoder_heads=2, tagger=block)],
        text_field="caption",
    )
    tagger1 = stage1.objectives["svq"].tokenizer.tagger
    with torch.no_grad():  # as if stage 1 had trained the ViT away from its pretrained weights
        for p in tagger1.encoder.vit.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save({"state_dict": stage1.state_dict()}, tmp_path / "stage1.ckpt")
    use_hub_cache(monkeypatch, tmp_path / "empty_hub")

    def stage2_model(**kwargs) -> VideoQAModel:
        return _stage2_model(block, patch=16, **kwargs)

    unloaded = stage2_model()
    assert unloaded.objectives["mvm"].tagger.config.pretrained is False
    assert weights.random_frozen_parts(unloaded) == ["objectives.mvm.tagger"]  # no hub weights sneak in
    loaded = stage2_model(
        init_from=str(tmp_path / "stage1.ckpt"),
        init_parts=["objectives.mvm.tagger"],
        init_rename={"objectives.mvm.tagger": "objectives.svq.tokenizer.tagger"},
    )
    assert weights.random_frozen_parts(loaded) == []
    state1, state2 = tagger1.state_dict(), loaded.objectives["mvm"].tagger.state_dict()
    assert state1.keys() == state2.keys() and all(torch.equal(state1[k], state2[k]) for k in state1)
    video = torch.rand(2, 3, 3, 32, 32)
    assert torch.equal(loaded.objectives["mvm"].tagger(video), tagger1.eval()(video))
