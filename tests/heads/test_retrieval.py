"""The retrieval head: (b, b) cosine similarity of projected v_cls* and t_cls over a temperature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqa_components import create
from vqa_components.heads.retrieval import RetrievalHead
from vqa_components.interfaces import FusionOutput, TextFeatures
from vqa_components.model import VideoQAModel
from vqa_components.registry import HEADS


def _inputs(pooled: torch.Tensor, cls: torch.Tensor) -> tuple[FusionOutput, TextFeatures]:
    b = cls.shape[0]
    text = TextFeatures(tokens=cls[:, None], cls=cls, mask=torch.ones(b, 1, dtype=torch.bool))
    return FusionOutput(pooled=pooled, tokens=pooled[:, None]), text


def _identity_head(dim: int, **kw) -> RetrievalHead:
    head = RetrievalHead(video_dim=dim, text_dim=dim, embed_dim=dim, **kw)
    with torch.no_grad():
        for proj in (head.video_proj, head.text_proj):
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
    return head


def test_registered():
    assert HEADS.get("retrieval") is RetrievalHead and RetrievalHead.task == "retrieval"


def test_logits_are_cosine_over_temperature_video_by_text():
    head = _identity_head(2, temperature=0.5, learn_temperature=False)
    video = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]])
    logits = head(*_inputs(video, text)).logits
    r = 1 / math.sqrt(2)
    cos = torch.tensor([[1.0, 0.0, r], [r, r, 1.0], [0.0, -1.0, -r]])  # row i: video i vs text j
    torch.testing.assert_close(logits, cos / 0.5)


def test_projection_then_normalisation():
    torch.manual_seed(0)
    head = RetrievalHead(video_dim=5, text_dim=3, embed_dim=4)
    video, text = torch.randn(2, 5), torch.randn(2, 3)
    logits = head(*_inputs(video, text)).logits
    v = F.normalize(head.video_proj(video), dim=-1)
    t = F.normalize(head.text_proj(text), dim=-1)
    torch.testing.assert_close(logits, (v @ t.T) / 0.07, rtol=1e-4, atol=1e-4)
    assert head.embed_video(video).norm(dim=-1).allclose(torch.ones(2))


def test_similarity_helper_normalises_and_allows_different_counts():
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    t = torch.tensor([[1.0, 1.0], [-4.0, 0.0], [0.0, 0.5]])
    sim = RetrievalHead.similarity(v, t)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(sim, torch.tensor([[r, -1.0, 0.0], [r, 0.0, 1.0]]))


def test_temperature_learnable_fixed_and_clamped():
    learn = RetrievalHead(4, 4, embed_dim=4, temperature=0.07)
    assert isinstance(learn.log_scale, torch.nn.Parameter)
    assert learn.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    learn(*_inputs(torch.randn(3, 4), torch.randn(3, 4))).logits.logsumexp(-1).sum().backward()
    assert learn.log_scale.grad is not None and learn.log_scale.grad != 0
    fixed = RetrievalHead(4, 4, embed_dim=4, temperature=0.2, learn_temperature=False)
    assert "log_scale" not in dict(fixed.named_parameters())
    assert fixed.scale.item() == pytest.approx(5.0)
    assert RetrievalHead(4, 4, temperature=1e-4).scale.item() == pytest.approx(100.0)
    with pytest.raises(ValueError):
        RetrievalHead(4, 4, temperature=0.0)


def test_in_a_model_gives_batch_by_batch_logits():
    torch.manual_seed(0)
    d = 32
    model = VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=d, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=d, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=d, text_dim=d, dim=d, num_layers=1, num_heads=2),
        head=create("head", "retrieval", video_dim=d, text_dim=d, embed_dim=16),
        objectives=[create("objective", "contrastive", video_dim=d, text_dim=d)],
        text_field="caption",
    )
    batch = {"video": torch.rand(3, 2, 3, 32, 32), "caption": ["a red ball", "a lamp", "a cube turns"]}
    out = model(batch)
    assert out.logits.shape == (3, 3)
    F.cross_entropy(out.logits, torch.arange(3)).backward()
    assert model.head.video_proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())
