"""timm backbone: values against timm's own forward, grids, stages, local weights, freezing, profile.

Nothing is downloaded: every model is built with ``pretrained=False`` and weights come from files
the tests write.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vqa_components.backbones.timm import TimmBackbone, load_timm_weights
from vqa_components.interfaces import ConfigError
from vqa_components.profiler import profile_model
from vqa_components.registry import BACKBONES, create

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
HEAD_KEYS = {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}


def part(**kw) -> TimmBackbone:
    torch.manual_seed(0)
    return TimmBackbone(**kw).eval()


def timm_edgenext(seed: int = 0, name: str = "edgenext_small") -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).eval()


def test_registered_with_the_papers_defaults():
    assert BACKBONES.get("timm") is TimmBackbone
    bb = create("backbone", "timm")
    assert bb.model_name == "edgenext_small" and bb.stage == 3 and bb.reduction == 32
    assert bb.out_dim == bb.feature_dim == 304 and bb.proj is None
    assert bb.weights_source is None and not bb.frozen and not bb.cacheable
    # the classifier head is pruned: EdgeNeXt-small without its classifier has 5.28M parameters
    assert sum(p.numel() for p in bb.parameters()) == 5_281_224


@torch.no_grad()
def test_tokens_are_the_projection_of_timms_own_forward_per_frame():
    bb = part(dim=16)
    ref = timm_edgenext(seed=1)
    missing, unexpected = ref.load_state_dict(bb.model.state_dict(), strict=False)
    assert set(missing) == HEAD_KEYS and not unexpected  # the part is timm's model without its head
    video = torch.rand(2, 3, 3, 64, 64)
    out = bb(video)
    assert out.tokens.shape == (2, 3, 4, 16) and out.cls.shape == (2, 3, 16) and out.grid == (2, 2)
    assert bb.out_dim == 16
    for i in range(2):
        for j in range(3):
            x = ((video[i, j] - IMAGENET_MEAN) / IMAGENET_STD)[None]
            grid = ref.forward_features(x)[0]  # (304, 2, 2)
            expected = grid.flatten(1).T @ bb.proj.weight.T + bb.proj.bias  # row-major cells
            torch.testing.assert_close(out.tokens[i, j], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.cls, out.tokens.mean(2))  # cls: the mean over the grid


@torch.no_grad()
def test_frames_are_encoded_independently():
    bb = part(dim=8, chunk_size=64)
    video = torch.rand(1, 4, 3, 64, 64)
    a = bb(video)
    changed = video.clone()
    changed[0, 2] = torch.rand(3, 64, 64)
    b = bb(changed)
    for j in (0, 1, 3):
        torch.testing.assert_close(b.tokens[0, j], a.tokens[0, j], rtol=1e-5, atol=1e-6)
    assert (b.tokens[0, 2] - a.tokens[0, 2]).abs().max() > 1e-3
    bb.chunk_size = 1  # one frame per forward pass: the same features
    torch.testing.assert_close(bb(video).tokens, a.tokens, rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("side,grid", [(256, (8, 8)), (224, (7, 7))])
def test_grid_of_the_last_stage(side, grid):
    out = part()(torch.rand(1, 1, 3, side, side))
    assert out.grid == grid
    assert out.tokens.shape == (1, 1, grid[0] * grid[1], 304)


@torch.no_grad()
def test_image_size_resizes_and_crops_and_stage_picks_the_level():
    out = part(image_size=256)(torch.rand(1, 2, 3, 224, 300))  # shorter side -> 256, centre crop
    assert out.grid == (8, 8)
    bb = part(stage=1)  # stride 8, 96 channels; later stages are pruned
    assert bb.feature_dim == bb.out_dim == 96 and len(bb.model.stages) == 2
    assert bb(torch.rand(1, 1, 3, 64, 64)).grid == (8, 8)
    with pytest.raises(ValueError, match=r"stage 4 is not a feature level of 'edgenext_small' \(0: 48 ch /4"):
        TimmBackbone(stage=4)


@torch.no_grad()
def test_any_timm_model_vit_patch_grid_with_final_norm():
    bb = part(model_name="vit_tiny_patch16_224", image_size=64, norm=True)
    frames = torch.rand(1, 2, 3, 64, 64)
    out = bb(frames)
    assert out.grid == (4, 4) and out.tokens.shape == (1, 2, 16, 192)
    torch.manual_seed(1)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    missing, unexpected = ref.load_state_dict(bb.model.state_dict(), strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected
    x = (frames[0] - 0.5) / 0.5  # this model's own pretrained_cfg statistics, not ImageNet's
    patches = ref.forward_features(x)[:, ref.num_prefix_tokens :]  # after the final LayerNorm
    torch.testing.assert_close(out.tokens[0], patches, rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "folder", "lightning"])
def test_checkpoint_of_timms_full_model_round_trips(tmp_path, fmt):
    src = timm_edgenext(seed=3)
    state = src.state_dict()  # what timm distributes: the classifier head included
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "edgenext.safetensors"
        save_file(state, str(path))
    elif fmt == "folder":
        from safetensors.torch import save_file

        path = tmp_path / "timm_edgenext_small"
        path.mkdir()
        save_file(state, str(path / "model.safetensors"))
    else:
        path = tmp_path / "edgenext.pth"
        torch.save(
            {"state_dict": {f"module.{k}": v for k, v in state.items()}} if fmt == "lightning" else state,
            path,
        )
    bb = TimmBackbone(checkpoint=str(path)).eval()
    assert bb.weights_source.startswith(str(path))
    frames = torch.rand(2, 3, 64, 64)
    expected = src.forward_features((frames - IMAGENET_MEAN) / IMAGENET_STD).flatten(2).transpose(1, 2)
    torch.testing.assert_close(bb(frames[None]).tokens[0], expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_checkpoint_of_the_pruned_part_round_trips_exactly(tmp_path):
    a = part(stage=2)
    path = tmp_path / "pruned.pt"
    torch.save(a.model.state_dict(), path)  # stage 3 and the head are not in it
    b = TimmBackbone(stage=2, checkpoint=str(path)).eval()
    video = torch.rand(1, 2, 3, 64, 64)
    assert torch.equal(b(video).tokens, a(video).tokens)
    fresh = TimmBackbone(stage=2).eval()  # another random init: really loaded
    assert not torch.allclose(fresh(video).tokens, a(video).tokens)


def test_missing_or_wrong_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=f"checkpoint file not found: {missing}"):
        TimmBackbone(checkpoint=str(missing))
    other = tmp_path / "x_small.pth"
    torch.save(timm_edgenext(name="edgenext_x_small").state_dict(), other)  # another architecture
    with pytest.raises(
        ConfigError, match=rf"checkpoint {other} does not fit timm edgenext_small: .*shape mismatches"
    ):
        TimmBackbone(checkpoint=str(other))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a weights file")
    with pytest.raises(ConfigError, match=str(broken)):
        TimmBackbone(checkpoint=str(broken))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(
        FileNotFoundError, match=f"{empty} holds none of the expected weight files: model.safetensors"
    ):
        TimmBackbone(checkpoint=str(empty))


def test_never_downloads(monkeypatch):
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("timm tried to load pretrained weights")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    TimmBackbone()  # pretrained=False: timm's loader is never called
    with pytest.raises(ValueError, match="may not set pretrained"):
        TimmBackbone(model_args={"pretrained": True})
    with pytest.raises(ValueError, match="unknown timm model 'edgenext_smal'"):
        TimmBackbone(model_name="edgenext_smal")


def test_frozen_model_stays_eval_projection_trains(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(timm_edgenext().state_dict(), path)
    bb = TimmBackbone(dim=8, frozen=True, checkpoint=str(path))
    assert bb.cacheable and bb.weights_source == str(path)
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert all(p.requires_grad for p in bb.proj.parameters())
    bb.train()
    assert not any(m.training for m in bb.model.modules())
    bb(torch.rand(1, 2, 3, 64, 64)).cls.sum().backward()
    assert bb.proj.weight.grad is not None
    trainable = TimmBackbone(dim=8)
    trainable.train()
    trainable(torch.rand(1, 2, 3, 64, 64)).cls.sum().backward()
    assert trainable.model.stem[0].weight.grad is not None and not trainable.cacheable


def test_load_timm_weights_drops_only_pruned_keys(tmp_path):
    bb = part(stage=2)
    state = dict(timm_edgenext(seed=5).state_dict())
    state["extra.weight"] = torch.zeros(1)  # a key no EdgeNeXt has
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"unexpected keys \(1\): extra.weight"):
        load_timm_weights(bb.model, path, "edgenext_small", bb.pruned_keys)


class _BackboneOnly(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, batch):
        return self.backbone(batch["video"])


def test_edgenext_small_profile_matches_the_paper():
    """1.25 GMACs per 256x256 frame (the paper's "1.26G FLOPs"), counted as `vqa profile` counts."""
    frames = 2
    report = profile_model(_BackboneOnly(TimmBackbone()), {"video": torch.rand(1, frames, 3, 256, 256)})
    assert report.method == "fake_tensor"
    per_frame = report.per_part["backbone"]["gmacs"] / frames
    assert abs(per_frame - 1.25) <= 0.02, per_frame
    projected = profile_model(
        _BackboneOnly(TimmBackbone(dim=384)), {"video": torch.rand(1, frames, 3, 256, 256)}
    )
    extra = projected.per_part["backbone"]["macs"] - report.per_part["backbone"]["macs"]
    assert extra == frames * 64 * 304 * 384  # the linear transformation: 64 cells x 304 -> 384
