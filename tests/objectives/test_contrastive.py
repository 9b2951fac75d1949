"""The contrastive objective (eq. 8) on matched pairs, against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vqa_components import create
from vqa_components.interfaces import FusionOutput, HeadOutput, ModelOutput, TextFeatures, VideoFeatures
from vqa_components.model import VideoQAModel
from vqa_components.objectives.contrastive import MatchedPairContrastive
from vqa_components.registry import OBJECTIVES


def _out(v: torch.Tensor, t: torch.Tensor) -> ModelOutput:
    b = v.shape[0]
    video = VideoFeatures(tokens=torch.zeros(b, 1, 1, 2), cls=torch.zeros(b, 1, 2))
    text = TextFeatures(tokens=t[:, None], cls=t, mask=torch.ones(b, 1, dtype=torch.bool))
    return ModelOutput(
        video=video,
        text=text,
        fused=FusionOutput(pooled=v, tokens=v[:, None]),
        head=HeadOutput(torch.zeros(b, 1)),
    )


def _fake_model(task: str = "classify") -> SimpleNamespace:
    return SimpleNamespace(head=SimpleNamespace(task=task), text_field="caption")


def test_registered():
    assert OBJECTIVES.get("contrastive") is MatchedPairContrastive


def test_hand_computed_loss_with_identity_projections():
    obj = MatchedPairContrastive(video_dim=2, text_dim=2, temperature=0.5)
    assert isinstance(obj.video_proj, nn.Identity) and isinstance(obj.text_proj, nn.Identity)
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    res = obj(_fake_model(), {"caption": ["a", "b"]}, _out(v, t))
    r = 1 / math.sqrt(2)
    s = [[1.0, r], [0.0, r]]  # s_ij = cos(v_i, t_j)
    expected = 0.0
    for i in range(2):
        expected -= s[i][i] / 0.5 - math.log(sum(math.exp(x / 0.5) for x in s[i]))
    assert res["loss"].item() == pytest.approx(expected / 2, rel=1e-5)
    assert res["acc"].item() == 1.0  # both rows peak on their own text


def test_aligned_pairs_give_near_zero_loss_and_shuffled_high():
    v = torch.eye(4) * 3
    obj = MatchedPairContrastive(video_dim=4, text_dim=4, temperature=0.07)
    assert obj(_fake_model(), {"caption": list("abcd")}, _out(v, torch.eye(4)))["loss"] < 1e-4
    wrong = obj(_fake_model(), {"caption": list("abcd")}, _out(v, torch.eye(4).roll(1, 0)))
    assert wrong["loss"] > 10 and wrong["acc"] == 0


def test_projections_when_widths_differ_or_embed_dim_given():
    a = MatchedPairContrastive(video_dim=6, text_dim=4)
    assert a.video_proj.out_features == a.text_proj.out_features == 4
    b = MatchedPairContrastive(video_dim=4, text_dim=4, embed_dim=3)
    assert isinstance(b.video_proj, nn.Linear) and b.video_proj.out_features == 3
    v, t = torch.randn(3, 6, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    res = a(_fake_model(), {"caption": list("abc")}, _out(v, t))
    res["loss"].backward()
    assert v.grad.abs().sum() > 0 and t.grad.abs().sum() > 0 and a.video_proj.weight.grad.abs().sum() > 0


def test_multiple_choice_forward_uses_only_correct_pairs():
    obj = MatchedPairContrastive(video_dim=3, text_dim=3)
    torch.manual_seed(0)
    v, t = torch.randn(6, 3), torch.randn(6, 3)  # 2 questions x 3 options
    batch = {"question": ["q0", "q1"], "options": [["a", "b", "c"]] * 2, "answer_idx": torch.tensor([2, 0])}
    res = obj(_fake_model("multiple_choice"), batch, _out(v, t))
    direct = obj(_fake_model(), {"caption": ["q0 c", "q1 a"]}, _out(v[[2, 3]], t[[2, 3]]))
    torch.testing.assert_close(res["loss"], direct["loss"])


def test_in_a_model_trains_fusion_and_text_encoder():
    torch.manual_seed(0)
    d = 32
    obj = create("objective", "contrastive", video_dim=d, text_dim=d)
    model = VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=d, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=d, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=d, text_dim=d, dim=d, num_layers=1, num_heads=2),
        head=create("head", "vtm_choice", in_dim=d),
        objectives=[obj],
        text_field="caption",
    )
    batch = {"video": torch.rand(3, 2, 3, 32, 32), "caption": ["a red ball", "a lamp", "a cube turns"]}
    out = model(batch)  # no options: the default forward, even with a multiple-choice head
    assert out.fused.pooled.shape == (3, d)
    obj(model, batch, out)["loss"].backward()
    for part in (model.fusion, model.text_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
