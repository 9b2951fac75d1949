"""VideoQAModel: assembly from parts, freezing, loading parts from an earlier stage, multiple choice."""

from __future__ import annotations

import pytest
import torch

from vqa_components import create
from vqa_components.model import VideoQAModel

D = 32


def tiny_model(**kwargs) -> VideoQAModel:
    parts = dict(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2),
        head=create("head", "answer_classifier", in_dim=D, num_answers=5),
        objectives=[create("objective", "answer_cross_entropy")],
    )
    parts.update(kwargs)
    return VideoQAModel(**parts)


def batch(b=3, t=4):
    return {
        "video": torch.rand(b, t, 3, 32, 32),
        "question": ["what color is the ball?", "how many flashes?", "which way?"][:b],
        "answer_idx": torch.tensor([0, 3, -1])[:b],
        "family": ["a", "b", "a"][:b],
    }


def test_forward_and_training_step_backprop_into_every_part():
    model = tiny_model()
    out = model(batch())
    assert out.logits.shape == (3, 5)
    assert out.video.tokens.shape == (3, 4, 4, D) and out.text.cls.shape == (3, D)
    loss = model._loss(batch(), out, "train")
    loss.backward()
    for name in ("backbone", "text_encoder", "fusion", "head"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_frozen_parts_get_no_gradient_and_stay_in_eval_mode():
    model = tiny_model(freeze=["backbone"])
    model.train()
    assert not model.backbone.training and model.fusion.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    opt = model.configure_optimizers()
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in model.backbone.parameters()}
    with pytest.raises(ValueError, match="no part 'trunk'"):
        tiny_model(freeze=["trunk"])


def test_init_from_loads_named_parts_of_an_earlier_stage(tmp_path):
    first = tiny_model()
    torch.save({"state_dict": first.state_dict()}, tmp_path / "stage1.ckpt")
    second = tiny_model(init_from=str(tmp_path / "stage1.ckpt"), init_parts=["backbone"])
    for a, b in zip(first.backbone.state_dict().values(), second.backbone.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(first.head.mlp[0].weight, second.head.mlp[0].weight)  # not asked for
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        tiny_model(init_from=str(tmp_path / "missing.ckpt"))


def test_multiple_choice_regroups_pair_scores():
    head = create("head", "answer_classifier", in_dim=D, num_answers=1, hidden_dim=0)
    head.task = "multiple_choice"
    model = tiny_model(head=head)
    b = batch(2)
    b["options"] = [["red", "green", "blue"], ["one", "two", "three"]]
    b["answer_idx"] = torch.tensor([2, 0])
    out = model(b)
    assert out.logits.shape == (2, 3)
    model._loss(b, out, "train").backward()
    preds = model.predict_step(b, 0)
    assert preds[0]["prediction"] in b["options"][0]


def test_skipped_videos_are_reported_at_epoch_end(caplog):
    model = tiny_model()
    model._record_skips({"num_skipped": 2, "skipped": ["/d/a.mp4 (record 3): corrupt", "/d/b.mp4 (record 9): gone"]})
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    model.on_train_epoch_end()
    assert logged["train/skipped_videos"] == 2.0
    assert "skipped 2 unreadable video(s)" in caplog.text and "/d/b.mp4" in caplog.text
    assert model.skipped_samples == []
