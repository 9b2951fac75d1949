"""gumbel_topk: hard one-hot selection with straight-through gradients."""

from __future__ import annotations

import pytest
import torch

from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures
from vqa_components.samplers.gumbel_topk import GumbelTopKSampler, straight_through_select

B, T, N, D = 2, 8, 3, 16


def video(t=T, seed=0, requires_grad=False):
    torch.manual_seed(seed)
    tokens = torch.randn(B, t, N, D, requires_grad=requires_grad)
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2))


def text(seed=1):
    torch.manual_seed(seed)
    tokens = torch.randn(B, 4, D)
    return TextFeatures(tokens=tokens, cls=tokens[:, 0], mask=torch.tensor([[True] * 4, [True, True, False, False]]))


def sampler(**kw):
    torch.manual_seed(0)
    args = {"video_dim": D, "text_dim": D, "num_frames": 4, "num_layers": 2, "num_heads": 2, "max_frames": 16}
    args.update(kw)
    return GumbelTopKSampler(**args)


def assert_one_hot(w):
    assert torch.all((w - 0).abs().lt(1e-6) | (w - 1).abs().lt(1e-6))
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


@pytest.mark.parametrize("allow_repeats", [True, False])
def test_forward_selection_is_one_hot_and_copies_frames(allow_repeats):
    s = sampler(allow_repeats=allow_repeats).train()
    v = video()
    out = s(v, text())
    assert out.weights.shape == (B, 4, T) and out.weights.dtype == torch.float32
    assert_one_hot(out.weights)
    assert torch.equal(out.weights.argmax(-1), out.indices)
    gathered = v.tokens[torch.arange(B)[:, None], out.indices]
    torch.testing.assert_close(out.video.tokens, gathered, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.video.cls, v.cls[torch.arange(B)[:, None], out.indices], atol=1e-6, rtol=0)
    assert out.video.frame_mask is None
    assert out.video.extras["selection_logits"].shape == (B, 4, T)
    gates = out.video.extras["frame_gates"]
    assert len(gates) == 2 and gates[0].shape == (B, 2, T)


def test_gradients_reach_the_scorer_through_the_selected_tokens():
    s = sampler().train()
    v = video(requires_grad=True)
    out = s(v, text())
    (out.video.tokens * torch.randn_like(out.video.tokens)).sum().backward()
    assert s.scorer.w_s.weight.grad is not None and s.scorer.w_s.weight.grad.abs().sum() > 0
    first_gate = s.scorer.blocks[0].gate
    assert first_gate.w_q.weight.grad.abs().sum() > 0 and first_gate.w_k.weight.grad.abs().sum() > 0
    assert s.scorer.temporal_embed.grad.abs().sum() > 0
    assert v.tokens.grad.abs().sum() > 0


def test_straight_through_gradient_is_the_softmax_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    c = torch.randn(2, 3, 5)
    mask, _, _ = straight_through_select(logits, tau=0.5, noise=False)
    assert torch.equal(mask.detach(), torch.nn.functional.one_hot(logits.argmax(-1), 5).float())
    (g,) = torch.autograd.grad((mask * c).sum(), logits)
    (g_ref,) = torch.autograd.grad(((logits / 0.5).softmax(-1) * c).sum(), logits)
    torch.testing.assert_close(g, g_ref)


def test_straight_through_gradient_with_noise_is_the_gradient_of_the_noisy_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    c = torch.randn(2, 3, 5)
    torch.manual_seed(7)
    mask, y_soft, idx = straight_through_select(logits, tau=0.5, noise=True)
    torch.manual_seed(7)  # the same Gumbel draw, made here from its definition: -log(Exp(1))
    gumbels = -torch.empty(2, 3, 5).exponential_().log()
    noisy = (logits + gumbels) / 0.5
    assert torch.equal(idx, noisy.argmax(-1))
    torch.testing.assert_close(y_soft, noisy.softmax(-1))
    (g,) = torch.autograd.grad((mask * c).sum(), logits)
    (g_ref,) = torch.autograd.grad((noisy.softmax(-1) * c).sum(), logits)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_noisy_selection_picks_each_frame_with_its_softmax_probability(tau):
    """Gumbel-max: argmax(x + g) is a draw from softmax(x), whatever the temperature. 20,000 draws
    at a fixed seed; the tolerance 0.015 is more than 4 standard errors (sqrt(p(1-p)/n) <= 0.0036)."""
    draws = 20_000
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    torch.manual_seed(0)
    _, _, idx = straight_through_select(logits.expand(draws, 1, 5), tau=tau, noise=True)
    freq = torch.bincount(idx.flatten(), minlength=5).float() / draws
    torch.testing.assert_close(freq, logits.softmax(-1), atol=0.015, rtol=0)


def test_noisy_selection_without_repeats_samples_without_replacement():
    """With allow_repeats=False slot 2 draws from the frames slot 1 left: P(i, j) = p_i * p_j / (1 - p_i)
    (equal logits across slots). 20,000 draws, fixed seed, absolute tolerance 0.012 per pair."""
    draws = 20_000
    logits = torch.tensor([1.5, 0.5, 0.0, -1.0])
    p = logits.softmax(-1)
    torch.manual_seed(1)
    _, _, idx = straight_through_select(logits.expand(draws, 2, 4), noise=True, allow_repeats=False)
    assert torch.all(idx[:, 0] != idx[:, 1])
    freq = torch.bincount(idx[:, 0] * 4 + idx[:, 1], minlength=16).float().view(4, 4) / draws
    expected = p[:, None] * p[None, :] / (1 - p[:, None])
    expected.fill_diagonal_(0.0)
    torch.testing.assert_close(freq, expected, atol=0.012, rtol=0)


def test_no_repeats_over_many_seeds():
    s = sampler(num_frames=7, allow_repeats=False, tau=0.3, num_layers=1)
    v, q = video(), text()
    draws = [s.eval()(v, q).indices]
    s.train()
    for seed in range(25):
        torch.manual_seed(seed)
        draws.append(s(v, q).indices)
    for idx in draws:
        for row in idx.tolist():
            assert len(set(row)) == 7, row
    assert len({tuple(d.flatten().tolist()) for d in draws}) > 1
    with pytest.raises(ValueError, match="distinct"):
        sampler(num_frames=9, allow_repeats=False)(v, q)


def test_no_repeat_selection_on_equal_logits_takes_distinct_frames():
    logits = torch.zeros(1, 5, 5)
    mask, _, idx = straight_through_select(logits, noise=False, allow_repeats=False)
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3, 4]
    assert_one_hot(mask)
    assert straight_through_select(logits, noise=False, allow_repeats=True)[2].unique().numel() == 1


def test_eval_is_deterministic_and_noise_free_training_is_not():
    s = sampler()
    v, q = video(), text()
    s.eval()
    a, b = s(v, q), s(v, q)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
    logits = a.video.extras["selection_logits"]
    assert torch.equal(a.indices, logits.argmax(-1))  # argmax per slot, no noise
    s.train()
    torch.manual_seed(0)
    draws = {tuple(s(v, q).indices.flatten().tolist()) for _ in range(8)}
    assert len(draws) > 1  # Gumbel noise


def test_slots_follow_time_and_stay_aligned():
    v, q = video(), text()
    s = sampler(sort_by_time=True).eval()
    out = s(v, q)
    assert torch.all(out.indices[:, 1:] >= out.indices[:, :-1])
    raw = sampler(sort_by_time=False).eval()(v, q)  # same weights (same seed)
    order = out.video.extras["slot_order"]
    torch.testing.assert_close(out.weights, raw.weights.gather(1, order[..., None].expand(-1, -1, T)))
    torch.testing.assert_close(
        out.video.extras["selection_logits"],
        raw.video.extras["selection_logits"].gather(1, order[..., None].expand(-1, -1, T)),
    )
    assert torch.equal(out.indices, raw.indices.gather(1, order))


def test_float32_selection_under_bfloat16_autocast():
    s = sampler().train()
    v = video()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = s(v, text())
    assert out.weights.dtype == torch.float32
    assert out.video.extras["selection_logits"].dtype == torch.float32
    assert_one_hot(out.weights)
    assert out.video.tokens.dtype == torch.float32
    # one-hot selection copies the frames exactly, not through a bfloat16 matmul
    torch.testing.assert_close(out.video.tokens, v.tokens[torch.arange(B)[:, None], out.indices], atol=1e-6, rtol=0)


def test_padded_frames_are_never_selected():
    s = sampler(num_frames=4, allow_repeats=False)
    v = video()
    v = v.replace(frame_mask=torch.tensor([[True] * 5 + [False] * 3, [True] * 8]))
    for seed in range(10):
        torch.manual_seed(seed)
        idx = s.train()(v, text()).indices
        assert idx[0].max() < 5


def test_question_changes_the_selection_logits_and_cross_attention_gate():
    v = video()
    for gate in ("la_gate", "cross_attention"):
        s = sampler(gate=gate).eval()
        a = s(v, text(1)).video.extras["selection_logits"]
        b = s(v, text(2)).video.extras["selection_logits"]
        assert not torch.allclose(a, b)
    assert s(v, text()).video.extras["frame_gates"] == []


def test_more_frames_than_temporal_table_and_registry():
    assert GumbelTopKSampler.registry_name == "gumbel_topk"
    s = GumbelTopKSampler(video_dim=D, text_dim=D, num_frames=3, num_layers=1, num_heads=2, max_frames=4)
    out = s(video(t=T), text())  # T = 8 > max_frames: interpolated temporal embedding
    assert out.indices.shape == (B, 3)
    hidden = sampler(dim=32)
    assert hidden.scorer.w_s.in_features == 32 and hidden(video(), text()).video.tokens.shape == (B, 4, N, D)


def test_several_streams_raise_instead_of_being_dropped():
    v = video()
    other = VideoFeatures(tokens=torch.randn(B, 2, 5, D), cls=torch.randn(B, 2, D))
    with pytest.raises(ConfigError) as err:
        sampler()(v.replace(streams=(v, other, other)), text())
    assert str(err.value) == (
        "sampler gumbel_topk selects frames of one stream, but the backbone gives 3 streams (a multi-stream "
        "backbone such as multi_stream): remove the sampler or use a single-stream backbone"
    )
    one = sampler()(v.replace(streams=(v,)), text())  # one stream: tokens are that stream, nothing dropped
    assert one.video.streams is None and one.video.tokens.shape == (B, 4, N, D)
