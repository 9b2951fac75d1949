"""co_tokenizer fusion: normalised joint maps, tokens = map-weighted averages, text-conditioned and iterative
selection, independent per-stream layers, linear cost in the video positions, and a training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vqa_components import create
from vqa_components.fusion.co_tokenizer import (
    CoTokenizerFusion,
    clip_time_embedding,
    relative_frame_times,
)
from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures
from vqa_components.registry import FUSIONS

B, L, DT, D, K = 2, 5, 10, 16, 4
#: three streams as in the paper: many small frames, fewer larger ones (frames, positions, width)
STREAMS = [(8, 2, 6), (4, 4, 8), (2, 9, 12)]


def streams_video(seed: int = 0, frame_mask: bool = True, t_scale: int = 1) -> VideoFeatures:
    g = torch.Generator().manual_seed(seed)
    parts = []
    for s, (t, n, d) in enumerate(STREAMS):
        tokens = torch.randn(B, t * t_scale, n, d, generator=g)
        mask = None
        if frame_mask and s == 1:  # sample 0 of stream 1 has its last frame padded
            mask = torch.ones(B, t * t_scale, dtype=torch.bool)
            mask[0, -1] = False
        parts.append(VideoFeatures(tokens=tokens, cls=tokens.mean(2), frame_mask=mask))
    return VideoFeatures(
        tokens=parts[0].tokens, cls=parts[0].cls, frame_mask=parts[0].frame_mask, streams=tuple(parts)
    )


def question(seed: int = 0) -> TextFeatures:
    g = torch.Generator().manual_seed(100 + seed)
    tokens = torch.randn(B, L, DT, generator=g)
    mask = torch.tensor([[True] * L, [True] * 3 + [False] * (L - 3)])
    return TextFeatures(tokens=tokens, cls=tokens[:, 0], mask=mask)


def fusion(seed: int = 0, **kw) -> CoTokenizerFusion:
    torch.manual_seed(seed)
    args = {
        "video_dim": [d for _, _, d in STREAMS],
        "text_dim": DT,
        "dim": D,
        "num_tokens": K,
        "num_heads": 2,
    }
    return CoTokenizerFusion(**{**args, **kw}).eval()


def hand_x(f: CoTokenizerFusion, video: VideoFeatures) -> torch.Tensor:
    """The embedded video positions, computed from the parameters without the part's helpers."""
    rows = []
    for s, stream in enumerate(video.streams):
        b, t, n, _ = stream.tokens.shape
        real = stream.frame_mask if stream.frame_mask is not None else torch.ones(b, t, dtype=torch.bool)
        tau = torch.zeros(b, t)
        for i in range(b):
            count = int(real[i].sum())
            for j in range(t):
                tau[i, j] = (j + 0.5) / count  # real frames come first in these fixtures
        time = torch.zeros(b, t, D)
        for c in range(0, D, 2):
            angle = 100 * tau / 10000 ** (c / D)
            time[..., c], time[..., c + 1] = torch.sin(angle), torch.cos(angle)
        proj = f.video_proj[s]
        x = stream.tokens @ proj.weight.T + proj.bias + time[:, :, None] + f.stream_embed[s]
        rows.append(x.reshape(b, t * n, D))
    return torch.cat(rows, 1)


def hand_condition(f: CoTokenizerFusion, text: TextFeatures) -> torch.Tensor:
    t = text.tokens @ f.text_proj.weight.T + f.text_proj.bias + f.text_embed
    w = text.mask.float()[..., None]
    return (t * w).sum(1) / w.sum(1)


def flat_maps(out, iteration: int) -> torch.Tensor:
    return torch.cat([m.flatten(2) for m in out.extras["selection_maps"][iteration]], dim=-1)


def test_registered_shapes_and_extras():
    assert FUSIONS.get("co_tokenizer") is CoTokenizerFusion
    f = fusion(num_iterations=2)
    out = f(streams_video(), question())
    assert (
        f.out_dim == D and out.tokens.shape == (B, K, D) and out.pooled.shape == (B, D) and out.mask is None
    )
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    maps = out.extras["selection_maps"]
    assert len(maps) == 2 and all(len(it) == 3 for it in maps)
    for it in maps:
        for m, (t, n, _) in zip(it, STREAMS):
            assert m.shape == (B, K, t, n)
    positions = [t * n for t, n, _ in STREAMS]
    assert out.extras["stream_bounds"] == [(0, 16), (16, 32), (32, 50)] and sum(positions) == 50
    assert out.extras["stream_shapes"] == [(t, n) for t, n, _ in STREAMS]


def test_single_stream_input_and_int_video_dim():
    torch.manual_seed(0)
    f = CoTokenizerFusion(video_dim=6, text_dim=DT, dim=D, num_tokens=K, num_heads=2).eval()
    tokens = torch.randn(B, 5, 3, 6)
    single = VideoFeatures(tokens=tokens, cls=tokens.mean(2))
    out = f(single, question())
    assert out.tokens.shape == (B, K, D) and out.extras["selection_maps"][0][0].shape == (B, K, 5, 3)
    # a one-stream tuple is the same input
    wrapped = single.replace(streams=(VideoFeatures(tokens=tokens, cls=tokens.mean(2)),))
    torch.testing.assert_close(f(wrapped, question()).pooled, out.pooled)
    with pytest.raises(ConfigError, match="got 3 video stream"):
        f(streams_video(), question())
    with pytest.raises(ConfigError, match="stream 0 has width 7"):
        f(VideoFeatures(tokens=torch.randn(B, 2, 2, 7), cls=torch.randn(B, 2, 7)), question())
    assert len(CoTokenizerFusion(video_dim=6, text_dim=DT, num_streams=3).video_proj) == 3


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_streams is 2"):
        CoTokenizerFusion(video_dim=[4, 4, 4], text_dim=4, num_streams=2)
    with pytest.raises(ConfigError, match="num_tokens"):
        CoTokenizerFusion(video_dim=4, text_dim=4, num_tokens=0)
    with pytest.raises(ConfigError, match="num_iterations"):
        CoTokenizerFusion(video_dim=4, text_dim=4, num_iterations=0)
    with pytest.raises(ConfigError, match="divisible"):
        CoTokenizerFusion(video_dim=4, text_dim=4, dim=10, num_heads=4)


def test_maps_sum_to_one_over_all_streams_and_are_zero_at_padding():
    f = fusion()
    video, text = streams_video(), question()
    after = {}  # each iteration's transformer output [Z'_i; T_i+1]
    for i, blocks in enumerate(f.blocks):
        blocks[-1].register_forward_hook(lambda mod, args, out, i=i: after.setdefault(i, out.detach()))
    out = f(video, text)
    x, c = hand_x(f, video), hand_condition(f, text)
    valid = torch.ones(B, 50, dtype=torch.bool)
    valid[0, 16 + 3 * 4 : 32] = False  # stream 1 (4 positions per frame), sample 0, last frame
    for i in range(3):
        maps = out.extras["selection_maps"][i]
        total = sum(m.sum(dim=(-1, -2)) for m in maps)  # (b, K): every stream's positions together
        torch.testing.assert_close(total, torch.ones(B, K))
        assert (maps[1][0, :, -1] == 0).all()  # the padded frame of stream 1, sample 0
        assert (maps[1][1, :, -1] > 0).all()  # the same frame is real in sample 1
        # iteration i's maps: one softmax over the real positions of all streams of logits conditioned on
        # c_i = c_1 (the question) + W_c LN(mean_k Z'_(i-1)) (eq. 6)
        cond = c if i == 0 else c + f.condition[i - 1](after[i - 1][:, :K].mean(1))
        logits = f.selectors[i].logits(x, cond)
        expected = logits.masked_fill(~valid[..., None], -math.inf).softmax(1).transpose(1, 2)
        torch.testing.assert_close(flat_maps(out, i), expected)


def test_sample_without_real_frames_gets_zero_maps_not_nan():
    video = streams_video(frame_mask=False)
    streams = [
        s.replace(frame_mask=torch.tensor([[False] * s.tokens.shape[1], [True] * s.tokens.shape[1]]))
        for s in video.streams
    ]
    out = fusion()(video.replace(streams=tuple(streams)), question())
    assert torch.isfinite(out.tokens).all()
    assert (flat_maps(out, 0)[0] == 0).all() and torch.allclose(flat_maps(out, 0)[1].sum(-1), torch.ones(K))


def test_relative_times_and_time_embedding_values():
    stream = VideoFeatures(
        tokens=torch.zeros(2, 4, 1, 3),
        cls=torch.zeros(2, 4, 3),
        frame_mask=torch.tensor([[True, True, False, False], [True] * 4]),
    )
    tau = relative_frame_times(stream)
    torch.testing.assert_close(tau[0, :2], torch.tensor([0.25, 0.75]))  # two real frames span the clip
    torch.testing.assert_close(tau[1], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    emb = clip_time_embedding(torch.tensor([0.3]), 4)[0]
    expected = [math.sin(30.0), math.cos(30.0), math.sin(0.3), math.cos(0.3)]  # 10000^(2/4) = 100
    torch.testing.assert_close(emb, torch.tensor(expected))
    # one clip-time axis for every stream: frame 0 of 3 and frame 1 of 9 are the same instant
    three = relative_frame_times(VideoFeatures(tokens=torch.zeros(1, 3, 1, 2), cls=torch.zeros(1, 3, 2)))
    nine = relative_frame_times(VideoFeatures(tokens=torch.zeros(1, 9, 1, 2), cls=torch.zeros(1, 9, 2)))
    torch.testing.assert_close(clip_time_embedding(three[0, 0], 16), clip_time_embedding(nine[0, 1], 16))
    assert not torch.allclose(clip_time_embedding(three[0, 0], 16), clip_time_embedding(nine[0, 0], 16))


def test_map_mlp_matches_hand_layernorm_linear_gelu_linear():
    f = fusion()
    video, text = streams_video(), question()
    sel = f.selectors[0]
    with torch.no_grad():  # non-trivial affine LayerNorm and biases
        for p in (sel.norm.weight, sel.norm.bias, sel.mlp[0].bias, sel.mlp[3].bias):
            p.normal_()
    x, c = hand_x(f, video), hand_condition(f, text)
    h = x + c[:, None]
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    h = (h - mu) / torch.sqrt(var + 1e-5) * sel.norm.weight + sel.norm.bias
    h = h @ sel.mlp[0].weight.T + sel.mlp[0].bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    logits = h @ sel.mlp[3].weight.T + sel.mlp[3].bias  # (b, P, K)
    assert sel.mlp[0].out_features == 64 and logits.shape == (B, 50, K)  # TokenLearner v1.1's bottleneck
    torch.testing.assert_close(sel.logits(x, c), logits)
    # the maps of iteration 1: softmax of these logits over the real positions of all streams
    valid = torch.ones(B, 50, dtype=torch.bool)
    valid[0, 16 + 3 * 4 : 32] = False  # stream 1 (4 positions per frame), sample 0, last frame
    expected = logits.masked_fill(~valid[..., None], -math.inf).softmax(1).transpose(1, 2)
    out = f(video, text)
    torch.testing.assert_close(flat_maps(out, 0), expected)


def test_tokens_are_map_weighted_averages_of_the_projected_inputs():
    f = fusion(num_iterations=1)
    video, text = streams_video(), question()
    seen = {}
    f.blocks[0][0].register_forward_pre_hook(lambda mod, args: seen.setdefault("h", args[0].detach().clone()))
    out = f(video, text)
    x = hand_x(f, video)
    maps = flat_maps(out, 0)  # (b, K, P)
    expected = torch.zeros(B, K, D)
    for b in range(B):
        for k in range(K):
            for p in range(x.shape[1]):
                expected[b, k] += maps[b, k, p] * x[b, p]
    torch.testing.assert_close(seen["h"][:, :K], expected)
    # the text tokens join the transformer layer: the projected question follows the K tokens
    t = text.tokens @ f.text_proj.weight.T + f.text_proj.bias + f.text_embed
    torch.testing.assert_close(seen["h"][:, K:], t)


def test_changing_only_the_question_changes_the_maps_and_tokens():
    f = fusion()
    video = streams_video()
    a, b, again = f(video, question(0)), f(video, question(1)), f(video, question(0))
    for i in range(3):
        assert not torch.allclose(flat_maps(a, i), flat_maps(b, i), atol=1e-6)
        torch.testing.assert_close(flat_maps(a, i), flat_maps(again, i))
    assert not torch.allclose(a.tokens, b.tokens, atol=1e-5)
    # padded question tokens do not count
    q = question(0)
    changed = q.tokens.clone()
    changed[1, 3:] = 100.0
    torch.testing.assert_close(f(video, TextFeatures(changed, q.cls, q.mask)).tokens, a.tokens)


def test_iterations_refine_each_other_and_their_number_changes_the_output():
    three = fusion(num_iterations=3)
    two = fusion(num_iterations=2)
    state = {k: v for k, v in three.state_dict().items() if k in two.state_dict()}
    two.load_state_dict(state)  # the first two iterations of `three`
    video, text = streams_video(), question()
    out3, out2 = three(video, text), two(video, text)
    for i in range(2):
        torch.testing.assert_close(flat_maps(out3, i), flat_maps(out2, i))
    assert not torch.allclose(out3.tokens, out2.tokens, atol=1e-5)
    assert not torch.allclose(out3.pooled, out2.pooled, atol=1e-5)
    # iteration 2's maps depend on iteration 1's tokens (through c_2), iteration 1's do not
    with torch.no_grad():
        three.condition[0][1].weight.add_(torch.randn_like(three.condition[0][1].weight))
    out = three(video, text)
    torch.testing.assert_close(flat_maps(out, 0), flat_maps(out3, 0))
    assert not torch.allclose(flat_maps(out, 1), flat_maps(out3, 1), atol=1e-6)


def test_joint_selection_averages_video_and_words_so_text_changes_the_tokens_content():
    """selection: joint: each token is a map-weighted average of the video positions and the current
    text tokens (one map over both, padded words 0); under selection: video, with the question's
    influence on the maps removed, the tokens are the same whatever the question."""
    joint = fusion(num_iterations=1, selection="joint")
    video, text = streams_video(), question()
    seen = {}
    joint.blocks[0][0].register_forward_pre_hook(lambda mod, args: seen.__setitem__("h", args[0].detach().clone()))
    out = joint(video, text)
    x = hand_x(joint, video)
    t = text.tokens @ joint.text_proj.weight.T + joint.text_proj.bias + joint.text_embed
    video_maps, text_maps = flat_maps(out, 0), out.extras["text_maps"][0]  # (b, K, P), (b, K, l)
    torch.testing.assert_close(video_maps.sum(-1) + text_maps.sum(-1), torch.ones(B, K))
    assert (text_maps[1, :, 3:] == 0).all() and (text_maps[:, :, :3] > 0).all()  # sample 1 pads 2 words
    expected = torch.einsum("bkp,bpd->bkd", video_maps, x) + torch.einsum("bkl,bld->bkd", text_maps, t)
    torch.testing.assert_close(seen["h"][:, :K], expected)

    # maps that ignore their input (uniform): the tokens are plain means, of video and words when joint
    video_only = fusion(num_iterations=1)
    for f in (joint, video_only):
        with torch.no_grad():
            f.selectors[0].mlp[3].weight.zero_()
            f.selectors[0].mlp[3].bias.zero_()

    def first_tokens(f, q):
        got = {}
        handle = f.blocks[0][0].register_forward_pre_hook(lambda mod, args: got.update(z=args[0][:, :K]))
        f(video, q)
        handle.remove()
        return got["z"]

    other = question(1)
    torch.testing.assert_close(first_tokens(video_only, text), first_tokens(video_only, other))
    assert not torch.allclose(first_tokens(joint, text), first_tokens(joint, other), atol=1e-4)
    words = other.tokens @ joint.text_proj.weight.T + joint.text_proj.bias + joint.text_embed
    real = torch.cat([s.frame_mask.repeat_interleave(n, 1) if s.frame_mask is not None else torch.ones(B, t * n, dtype=bool)
                      for s, (t, n, _) in zip(video.streams, STREAMS)], 1)  # fmt: skip
    for b in range(B):  # the mean of sample b's real video positions and real words
        rows = torch.cat([x[b][real[b]], words[b][other.mask[b]]])
        torch.testing.assert_close(first_tokens(joint, other)[b], rows.mean(0).expand(K, D))


def test_carried_tokens_change_round_two_by_exactly_round_one_output():
    """carry: residual: round 2's tokens are its new selection plus round 1's tokens after their
    transformer layer; carry: fresh drops them. Round 1 is the same either way."""
    carried = fusion(num_iterations=2, carry="residual")
    fresh = fusion(num_iterations=2)
    fresh.load_state_dict(carried.state_dict())
    video, text = streams_video(), question()
    seen = {}
    for name, f in (("carried", carried), ("fresh", fresh)):
        f.blocks[0][0].register_forward_hook(lambda mod, args, out, n=name: seen.__setitem__((n, 1), out[:, :K]))
        f.blocks[1][0].register_forward_pre_hook(lambda mod, args, n=name: seen.__setitem__((n, 2), args[0][:, :K]))
    a, b = carried(video, text), fresh(video, text)
    torch.testing.assert_close(seen["carried", 1], seen["fresh", 1])
    torch.testing.assert_close(flat_maps(a, 1), flat_maps(b, 1))  # the same selection ...
    torch.testing.assert_close(seen["carried", 2], seen["fresh", 2] + seen["fresh", 1])  # ... plus round 1's
    assert not torch.allclose(a.tokens, b.tokens, atol=1e-5)
    with pytest.raises(ConfigError, match="carry must be"):
        fusion(carry="accumulate")
    with pytest.raises(ConfigError, match="selection must be"):
        fusion(selection="text")


def test_per_stream_linear_layers_are_independent():
    f = fusion()
    assert len({id(p.weight) for p in f.video_proj}) == 3
    assert [p.in_features for p in f.video_proj] == [6, 8, 12]
    video = streams_video()
    x0, _, bounds, _ = f.embed_video(video)
    with torch.no_grad():
        f.video_proj[1].weight.mul_(2.0)
    x1, _, _, _ = f.embed_video(video)
    (a0, e0), (a1, e1), (a2, e2) = bounds
    torch.testing.assert_close(x1[:, a0:e0], x0[:, a0:e0])
    torch.testing.assert_close(x1[:, a2:e2], x0[:, a2:e2])
    assert not torch.allclose(x1[:, a1:e1], x0[:, a1:e1])
    # gradients: a loss on stream 0's positions reaches only stream 0's linear layer
    f.zero_grad()
    f.embed_video(video)[0][:, a0:e0].sum().backward()
    assert f.video_proj[0].weight.grad.abs().sum() > 0
    for other in f.video_proj[1:]:
        assert other.weight.grad is None or not other.weight.grad.any()


def test_append_text_outputs_question_tokens_with_mask():
    f = fusion(append_text=True)
    text = question()
    out = f(streams_video(), text)
    assert out.tokens.shape == (B, K + L, D) and out.mask.shape == (B, K + L)
    assert out.mask[:, :K].all() and torch.equal(out.mask[:, K:], text.mask)
    torch.testing.assert_close(out.pooled, out.tokens[:, :K].mean(1))
    # the same weights without append_text: the same co-tokens
    g = fusion(append_text=False)
    g.load_state_dict(f.state_dict())
    torch.testing.assert_close(g(streams_video(), text).tokens, out.tokens[:, :K])


def _matmul_flops(module, video, text) -> int:
    # the math attention kernel: FlopCounterMode does not count CPU's fused attention kernels
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(video, text)
    return counter.get_total_flops()


def test_cost_grows_linearly_with_video_positions():
    f = fusion()
    counts = [_matmul_flops(f, streams_video(t_scale=s, frame_mask=False), question()) for s in (1, 2, 4)]
    assert counts[0] < counts[1] < counts[2]
    assert counts[2] - counts[1] == 2 * (counts[1] - counts[0])  # f(P) = a + b P, exactly
    # the concatenation baseline over the same streams grows faster than linearly (attention over all tokens)
    torch.manual_seed(0)
    concat = create(
        "fusion",
        "concat_self_attention",
        video_dim=[d for _, _, d in STREAMS],
        text_dim=DT,
        dim=D,
        num_heads=2,
    ).eval()
    base = [_matmul_flops(concat, streams_video(t_scale=s, frame_mask=False), question()) for s in (1, 2, 4)]
    assert base[2] - base[1] > 2 * (base[1] - base[0])
    assert counts[2] < base[2]


def test_runs_under_bf16_autocast():
    f = fusion()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = f(streams_video(), question())
    assert torch.isfinite(out.pooled.float()).all()
    total = sum(m.float().sum(dim=(-1, -2)) for m in out.extras["selection_maps"][0])
    torch.testing.assert_close(total, torch.ones(B, K), atol=1e-2, rtol=0)


def test_forward_backward_through_videoqa_model():
    from vqa_components.model import VideoQAModel

    torch.manual_seed(0)
    model = VideoQAModel(
        backbone=create("backbone", "blind", dim=D),
        text_encoder=create(
            "text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2, max_length=16
        ),
        fusion=create(
            "fusion",
            "co_tokenizer",
            video_dim=[d for _, _, d in STREAMS],
            text_dim=D,
            dim=D,
            num_tokens=K,
            num_heads=2,
            num_iterations=2,
        ),
        head=create("head", "answer_classifier", in_dim=D, num_answers=7),
        objectives=[create("objective", "answer_cross_entropy")],
    )
    model.train()
    video = streams_video()
    for s in video.streams:
        s.tokens.requires_grad_(True)
    text = model.encode_text(["what is poured second?", "which way does it move?"])
    out = model.forward_features(video, text)
    assert out.logits.shape == (B, 7)
    F.cross_entropy(out.logits, torch.tensor([1, 5])).backward()
    for name, p in model.fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # every weight trains (DDP needs it)
    assert all(s.tokens.grad is not None and s.tokens.grad.abs().sum() > 0 for s in video.streams)
    assert model.text_encoder.embed.weight.grad is not None
