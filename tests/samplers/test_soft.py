"""soft sampler (Table 4 c): softmax-weighted sums of the dense frames."""

from __future__ import annotations

import pytest
import torch

from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures
from vqa_components.samplers._frame_scorer import FrameScorer
from vqa_components.samplers.soft import SoftSampler

B, T, N, D = 2, 6, 3, 16


def inputs(requires_grad=False):
    torch.manual_seed(0)
    tokens = torch.randn(B, T, N, D, requires_grad=requires_grad)
    q = torch.randn(B, 4, D)
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2)), TextFeatures(q, q[:, 0], torch.ones(B, 4, dtype=torch.bool))


def sampler(**kw):
    torch.manual_seed(0)
    return SoftSampler(D, D, **{"num_frames": 3, "num_layers": 2, "num_heads": 2, "max_frames": 8, **kw})


def test_weights_are_a_softmax_of_the_logits_and_tokens_their_weighted_sum():
    s = sampler(tau=0.5)
    v, q = inputs()
    out = s(v, q)
    logits = out.video.extras["selection_logits"]
    torch.testing.assert_close(out.weights, (logits / 0.5).softmax(-1))
    assert out.weights.shape == (B, 3, T) and torch.all(out.weights > 0)
    assert out.weights.max() < 1 - 1e-4  # soft, not one-hot
    torch.testing.assert_close(out.video.tokens, torch.einsum("bkt,btnd->bknd", out.weights, v.tokens))
    torch.testing.assert_close(out.video.cls, torch.einsum("bkt,btd->bkd", out.weights, v.cls))
    assert torch.equal(out.indices, out.weights.argmax(-1))
    assert torch.all(out.indices[:, 1:] >= out.indices[:, :-1])  # slots ordered by their main frame


def test_shares_the_frame_scorer_and_adds_no_sampling_noise():
    s = sampler(dropout=0.0)
    assert isinstance(s.scorer, FrameScorer)
    v, q = inputs()
    a = s.train()(v, q)
    b = s.train()(v, q)
    c = s.eval()(v, q)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.weights, c.weights)  # no Gumbel noise in training


def test_deterministic_at_evaluation_with_dropout():
    s = sampler(dropout=0.5)
    v, q = inputs()
    s.train()
    torch.manual_seed(1)
    a = s(v, q).weights
    b = s(v, q).weights
    assert not torch.allclose(a, b)  # dropout is active in training ...
    s.eval()
    torch.manual_seed(2)
    c = s(v, q).weights
    torch.manual_seed(3)
    d = s(v, q).weights
    assert torch.equal(c, d)  # ... and off at evaluation, whatever the random state


def test_gradients_reach_scorer_and_frames():
    s = sampler()
    v, q = inputs(requires_grad=True)
    out = s(v, q)
    (out.video.tokens * torch.randn_like(out.video.tokens)).sum().backward()
    assert s.scorer.w_s.weight.grad.abs().sum() > 0
    assert s.scorer.blocks[0].gate.w_k.weight.grad.abs().sum() > 0
    assert v.tokens.grad.abs().sum() > 0


def test_padded_frames_get_zero_weight_and_registry():
    assert SoftSampler.registry_name == "soft"
    s = SoftSampler(video_dim=D, text_dim=D, num_frames=2, num_layers=1, num_heads=2)
    v, q = inputs()
    v = v.replace(frame_mask=torch.tensor([[True] * 4 + [False] * 2, [True] * 6]))
    w = s(v, q).weights
    assert torch.all(w[0, :, 4:] == 0) and torch.all(w[1] > 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, 2))


def test_scores_frames_exactly_as_gumbel_topk_and_ignores_the_random_state():
    from vqa_components.samplers.gumbel_topk import GumbelTopKSampler

    kw = {"num_frames": 3, "num_layers": 2, "num_heads": 2, "max_frames": 8, "sort_by_time": False}
    torch.manual_seed(0)
    soft = SoftSampler(D, D, **kw)
    torch.manual_seed(0)
    topk = GumbelTopKSampler(D, D, **kw)
    v, q = inputs()
    soft.eval(), topk.eval()
    torch.testing.assert_close(
        soft(v, q).video.extras["selection_logits"], topk(v, q).video.extras["selection_logits"]
    )
    soft.train()
    torch.manual_seed(1)
    a = soft(v, q).weights
    torch.manual_seed(2)
    assert torch.equal(a, soft(v, q).weights)


def test_several_streams_raise_instead_of_being_dropped():
    v, q = inputs()
    other = VideoFeatures(tokens=torch.randn(B, 2, 5, D), cls=torch.randn(B, 2, D))
    with pytest.raises(ConfigError, match=r"^sampler soft selects frames of one stream, .* 2 streams"):
        sampler()(v.replace(streams=(v, other)), q)
