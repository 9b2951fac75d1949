"""open_clip image-tower backbone: shapes, freezing, weight loading (tiny config, no download)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqa_components.backbones.open_clip import OpenClipBackbone
from vqa_components.layers.open_clip import build_open_clip_model
from vqa_components.registry import BACKBONES

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny(**kw) -> OpenClipBackbone:
    torch.manual_seed(0)
    return OpenClipBackbone("tiny", model_config=TINY, **kw)


def test_registered():
    assert BACKBONES.get("open_clip") is OpenClipBackbone


@pytest.mark.parametrize("project,dim", [(True, 32), (False, 64)])
def test_shapes(project, dim):
    bb = tiny(project=project)
    assert bb.out_dim == dim and bb.cacheable
    out = bb(torch.rand(2, 3, 3, 32, 32))
    assert out.tokens.shape == (2, 3, 16, dim)
    assert out.cls.shape == (2, 3, dim)
    assert torch.isfinite(out.tokens).all()


def test_cls_is_clip_image_embedding():
    """With projection, cls is exactly what open_clip's encode_image returns."""
    torch.manual_seed(0)
    model = build_open_clip_model("tiny", TINY).eval()
    bb = tiny()
    bb.visual.load_state_dict(model.visual.state_dict())
    frames = torch.rand(4, 3, 32, 32)
    ref = model.encode_image(bb.preprocess(frames))
    out = bb(frames[None])
    torch.testing.assert_close(out.cls[0], ref, rtol=1e-5, atol=1e-5)


def test_resize_and_chunking_do_not_change_results():
    bb = tiny(chunk_size=64)
    video = torch.rand(1, 5, 3, 48, 64)  # not 32x32: shorter side resize + centre crop
    a = bb(video)
    bb.chunk_size = 2
    b = bb(video)
    assert a.tokens.shape == (1, 5, 16, 32)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-5, atol=1e-5)


def test_frozen_stays_eval_and_has_no_grads():
    bb = tiny()
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not any(m.training for m in bb.modules())
    assert not bb(torch.rand(1, 2, 3, 32, 32)).tokens.requires_grad


def test_trainable_when_not_frozen():
    bb = tiny(frozen=False)
    bb.train()
    assert bb.training
    out = bb(torch.rand(1, 2, 3, 32, 32))
    out.cls.sum().backward()
    assert bb.visual.conv1.weight.grad is not None


@pytest.mark.parametrize("layout", ["full", "visual_only", "safetensors", "train_ckpt"])
def test_checkpoint_round_trip(tmp_path, layout):
    torch.manual_seed(1)
    src = build_open_clip_model("tiny", TINY)
    state = src.state_dict()
    path = tmp_path / "w.pt"
    if layout == "visual_only":
        torch.save(src.visual.state_dict(), path)
    elif layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        path = tmp_path  # a folder holding a known file name
    elif layout == "train_ckpt":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    bb = tiny(checkpoint=str(path))
    video = torch.rand(1, 2, 3, 32, 32)
    ref = tiny()
    ref.visual.load_state_dict(src.visual.state_dict())
    assert torch.equal(bb(video).tokens, ref(video).tokens)
    assert not torch.equal(tiny()(video).tokens, bb(video).tokens)  # the random init differs
    # where the weights came from: the file read (the known file inside a folder), None while random
    expected = tmp_path / "open_clip_model.safetensors" if layout == "safetensors" else path
    assert bb.weights_source == str(expected) and ref.weights_source is None


def test_own_state_dict_round_trip(tmp_path):
    a = tiny()
    torch.save(a.state_dict(), tmp_path / "part.pt")
    torch.manual_seed(5)
    b = OpenClipBackbone("tiny", model_config=TINY, checkpoint=str(tmp_path / "part.pt"))
    video = torch.rand(1, 2, 3, 32, 32)
    assert torch.equal(a(video).cls, b(video).cls)


def _grid_resized(pe: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """An independent bicubic resize (align_corners=False) of a (1 + old², d) table's patch rows."""
    patches = pe[1:].T.reshape(1, -1, old, old)
    patches = F.interpolate(patches, size=(new, new), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([pe[:1], patches.reshape(-1, new * new).T])


def test_checkpoint_of_other_resolution_is_resized(tmp_path):
    src = tiny()
    with torch.no_grad():  # a table with structure across the grid, so that a wrong layout shows
        grid = torch.linspace(-1, 1, 4)
        rows = grid[:, None, None] * torch.randn(64) + grid[None, :, None] ** 2 * torch.randn(64)
        rows = rows.reshape(16, 64)
        src.visual.positional_embedding.copy_(torch.cat([torch.randn(1, 64), rows]))
    torch.save(src.state_dict(), tmp_path / "w.pt")
    pe = src.visual.positional_embedding.detach()
    bb = tiny(image_size=48, checkpoint=str(tmp_path / "w.pt"))  # 4x4 patches -> 6x6
    assert bb(torch.rand(1, 1, 3, 48, 48)).tokens.shape == (1, 1, 36, 32)
    resized = bb.visual.positional_embedding.detach()
    assert torch.equal(resized[0], pe[0])  # the class token's embedding is kept as it is
    torch.testing.assert_close(resized, _grid_resized(pe, 4, 6))
    # bicubic, not another mode: bilinear gives another table
    bilinear = F.interpolate(pe[1:].T.reshape(1, -1, 4, 4), size=(6, 6), mode="bilinear", align_corners=False)
    assert not torch.allclose(resized[1:], bilinear.reshape(-1, 36).T, atol=1e-3)
    # the other weights are the checkpoint's
    assert torch.equal(bb.visual.conv1.weight, src.visual.conv1.weight)
    # the grid it was made for: the table loads unchanged
    same = tiny(image_size=32, checkpoint=str(tmp_path / "w.pt"))
    assert torch.equal(same.visual.positional_embedding, pe)
    # down to a smaller grid too (2x2 patches at 16 px), with the same interpolation
    small = tiny(image_size=16, checkpoint=str(tmp_path / "w.pt"))
    torch.testing.assert_close(small.visual.positional_embedding.detach(), _grid_resized(pe, 4, 2))


def test_a_file_that_needs_code_to_load_is_refused_in_one_line(tmp_path):
    """Weight files are read with weights_only=True: a pickled object other than tensors is refused."""
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": tiny().state_dict(), "optimizer": torch.optim.AdamW}, path)
    with pytest.raises(ValueError) as err:
        tiny(checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg and "weights-only" in msg and "torch.optim.adamw.AdamW" in msg and "\n" not in msg


def test_wrong_checkpoint_names_file_and_keys(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"visual.conv1.weight": torch.zeros(64, 3, 8, 8), "visual.foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError) as err:
        tiny(checkpoint=str(bad))
    msg = str(err.value)
    assert str(bad) in msg and "missing keys" in msg and "unexpected keys" in msg and "foo" in msg
    other = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "width": 32}}
    torch.save(build_open_clip_model("o", other).state_dict(), bad)
    with pytest.raises(ValueError, match="shape mismatches"):
        tiny(checkpoint=str(bad))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        tiny(checkpoint=str(tmp_path / "nope.pt"))


def test_non_vit_rejected():
    with pytest.raises(ValueError, match="ViT"):
        OpenClipBackbone("RN50")


def test_vit_b16_builds_and_runs_one_frame():
    bb = OpenClipBackbone("ViT-B-16")
    assert bb.out_dim == 512 and bb.image_size == (224, 224)
    out = bb(torch.rand(1, 1, 3, 224, 224))
    assert out.tokens.shape == (1, 1, 196, 512) and out.cls.shape == (1, 1, 512)


def test_frozen_backbone_stays_frozen_inside_a_training_model():
    """VideoQAModel.train() (what Lightning calls every epoch) must not switch the frozen tower to train mode."""
    from vqa_components import create
    from vqa_components.model import VideoQAModel

    bb = tiny()
    model = VideoQAModel(
        backbone=bb,
        text_encoder=create("text_encoder", "small_transformer", dim=32, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=32, text_dim=32, dim=32, num_layers=1, num_heads=2),
        head=create("head", "answer_classifier", in_dim=32, num_answers=3),
        objectives=[create("objective", "answer_cross_entropy")],
    )
    model.train()
    assert model.fusion.training and not bb.training and not any(m.training for m in bb.modules())
    opt = model.configure_optimizers()
    assert not {id(p) for g in opt.param_groups for p in g["params"]} & {id(p) for p in bb.parameters()}
    batch = {"video": torch.rand(2, 2, 3, 32, 32), "question": ["a?", "b?"], "answer_idx": torch.tensor([0, 1])}
    model.loss(batch, model(batch), "train").backward()
    assert all(p.grad is None for p in bb.parameters())
    assert model.text_encoder.embed.weight.grad is not None
