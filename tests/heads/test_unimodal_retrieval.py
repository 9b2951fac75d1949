"""unimodal_retrieval: cosine of the unimodal embeddings (backbone, text encoder); the fusion is ignored."""

from __future__ import annotations

import pytest
import torch

from vqa_components import create
from vqa_components.heads.retrieval import RetrievalHead
from vqa_components.heads.unimodal_retrieval import UnimodalRetrievalHead
from vqa_components.interfaces import ConfigError, FusionOutput, TextFeatures, VideoFeatures
from vqa_components.metrics import answer_metric
from vqa_components.model import VideoQAModel
from vqa_components.registry import HEADS

D = 32


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, e), (m, e) -> (n, m)`` cosine similarities written out."""
    return (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None, :])


def test_registered_as_a_retrieval_head_that_reads_no_fusion():
    assert HEADS.get("unimodal_retrieval") is UnimodalRetrievalHead
    assert issubclass(UnimodalRetrievalHead, RetrievalHead) and UnimodalRetrievalHead.task == "retrieval"
    assert UnimodalRetrievalHead.uses_fusion is False


def test_logits_are_the_scaled_cosine_of_the_mean_frame_feature_and_the_text_feature():
    torch.manual_seed(0)
    head = UnimodalRetrievalHead(
        video_dim=6, text_dim=5, embed_dim=4, temperature=0.5, learn_temperature=False
    )
    cls = torch.randn(3, 4, 6)
    frame_mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    video = VideoFeatures(tokens=cls[:, :, None], cls=cls, frame_mask=frame_mask)
    text_cls = torch.randn(3, 5)
    text = TextFeatures(tokens=text_cls[:, None], cls=text_cls, mask=torch.ones(3, 1, dtype=torch.bool))
    pooled = torch.randn(3, 8)
    fused = FusionOutput(pooled=pooled, tokens=pooled[:, None], extras={"video_features": video})
    logits = head(fused, text).logits
    mean = torch.stack([cls[0].mean(0), cls[1, :2].mean(0), cls[2, 0]])  # real frames only
    v = mean @ head.video_proj.weight.T + head.video_proj.bias
    t = text_cls @ head.text_proj.weight.T + head.text_proj.bias
    torch.testing.assert_close(logits, cosine(v, t) / 0.5)
    # the fused features are not read: other values, the same logits
    noise = 100 * torch.randn(3, 8)
    other = FusionOutput(pooled=noise, tokens=noise[:, None], extras={"video_features": video})
    torch.testing.assert_close(head(other, text).logits, logits)
    with pytest.raises(ConfigError, match="extras\\['video_features'\\].*merged_transformer"):
        head(FusionOutput(pooled=pooled, tokens=pooled[:, None]), text)


def _model() -> VideoQAModel:
    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=create(
            "fusion", "merged_transformer", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2
        ),
        head=create("head", "unimodal_retrieval", video_dim=D, text_dim=D, embed_dim=16),
        objectives=[create("objective", "vtm", in_dim=D)],
        text_field="caption",
    )


def test_in_a_model_the_similarity_comes_from_the_encoders_and_ignores_the_fusion():
    torch.manual_seed(0)
    model = _model().eval()
    batch = {"video": torch.rand(3, 2, 3, 32, 32), "caption": ["a red ball", "a lamp", "a cube turns"]}
    out = model(batch)
    head = model.head
    v = out.video.cls.mean(1) @ head.video_proj.weight.T + head.video_proj.bias  # backbone only
    t = out.text.cls @ head.text_proj.weight.T + head.text_proj.bias  # text encoder only
    torch.testing.assert_close(out.logits, cosine(v, t) * head.scale, atol=1e-5, rtol=1e-5)
    emb_v, emb_t = head.embeddings(out)  # what the retrieval metric ranks
    torch.testing.assert_close(emb_v @ emb_t.T * head.scale, out.logits, atol=1e-5, rtol=1e-5)
    # another decoder, the same retrieval: the model does not even run it on the head's path
    calls = []
    model.fusion.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.add_(torch.randn_like(p))
    changed = model(batch)
    assert calls == []
    torch.testing.assert_close(changed.logits, out.logits)
    # no gradient reaches the fusion from the logits; the encoders and the head get one
    model.train()
    model(batch).logits.logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in model.fusion.parameters())
    for part in (model.head, model.backbone, model.text_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_the_retrieval_metric_ranks_the_unimodal_embeddings():
    torch.manual_seed(0)
    model = _model().eval()
    batch = {"video": torch.rand(4, 2, 3, 32, 32), "caption": ["a red ball", "a lamp", "a cube", "a hand"]}
    out = model(batch)
    metric = answer_metric("retrieval")
    metric.update_from(model.head, out, batch)
    values = metric.compute()
    emb_v, emb_t = model.head.embeddings(out)
    sim = emb_v @ emb_t.T
    t2v_rank = 1 + (sim > sim.diagonal()[None, :]).sum(0)  # column j: videos ranked for text j
    assert values["num_samples"] == 4
    assert values["t2v_r1"].item() == pytest.approx((t2v_rank <= 1).float().mean().item())
