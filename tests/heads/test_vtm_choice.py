"""The vtm_choice head: matching log-odds per pair, and the model's multiple-choice path with it."""

from __future__ import annotations

import torch

from vqa_components import create
from vqa_components.heads.vtm_choice import VTMHead
from vqa_components.interfaces import FusionOutput, TextFeatures
from vqa_components.model import VideoQAModel
from vqa_components.registry import HEADS

D = 32


def _text(b: int) -> TextFeatures:
    tokens = torch.zeros(b, 3, D)
    return TextFeatures(tokens=tokens, cls=tokens[:, 0], mask=torch.ones(b, 3, dtype=torch.bool))


def _model(objectives) -> VideoQAModel:
    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2),
        head=create("head", "vtm_choice", in_dim=D),
        objectives=objectives,
    )


def test_registered_as_multiple_choice_head():
    assert HEADS.get("vtm_choice") is VTMHead
    assert VTMHead.task == "multiple_choice"


def test_score_is_match_minus_nomatch_logit():
    head = VTMHead(in_dim=3)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
        head.proj.bias.copy_(torch.tensor([0.5, -1.0]))
    pooled = torch.tensor([[1.0, 1.0, 7.0], [0.0, 3.0, -2.0]])
    out = head(FusionOutput(pooled=pooled, tokens=pooled[:, None]), _text(2))
    # class 0 = no match: x0 + 0.5; class 1 = match: 2 x1 - 1
    expected = torch.tensor([[(2.0 - 1.0) - (1.0 + 0.5)], [(6.0 - 1.0) - (0.0 + 0.5)]])
    assert out.logits.shape == (2, 1)
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.logits[:, 0], head.matching_logits(pooled).diff(dim=-1)[:, 0])


def test_multiple_choice_path_with_vtm_objective_trains():
    torch.manual_seed(0)
    ce = create("objective", "answer_cross_entropy")
    vtm = create("objective", "vtm", in_dim=D, swap_prob=0.5)
    model = _model([ce, vtm])
    batch = {
        "video": torch.rand(2, 2, 3, 32, 32),
        "question": ["what moves?", "what color?"],
        "options": [["a ball", "a lamp", "a cube"], ["red", "blue", "green"]],
        "answer_idx": torch.tensor([2, 0]),
    }
    out = model(batch)
    assert out.logits.shape == (2, 3)
    # cell [i, j] is the head's log-odds of question i with option j, as a single-pair forward gives it
    with torch.no_grad():
        model.eval()
        for i in range(2):
            for j, option in enumerate(batch["options"][i]):
                single = {"video": batch["video"][i : i + 1], "question": [f"{batch['question'][i]} {option}"]}
                pooled = model(single).fused.pooled
                expected = model.head.matching_logits(pooled).diff(dim=-1)[0, 0]
                torch.testing.assert_close(model(batch).logits[i, j], expected)
        model.train()
    assert vtm.classifier(model) is model.head.proj  # shared 2-class layer
    loss = sum(obj.weight * obj(model, batch, out)["loss"] for obj in model.objectives)
    assert torch.isfinite(loss)
    loss.backward()
    for part in (model.head, model.fusion, model.backbone, model.text_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(
        p.grad is not None and p.grad.abs().sum() == 0 for p in vtm.proj.parameters()
    )  # unused, in graph
