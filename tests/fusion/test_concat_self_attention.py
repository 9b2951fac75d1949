"""concat_self_attention: one stream exactly as before (names, values); several streams all join the sequence."""

from __future__ import annotations

import pytest
import torch

from vqa_components.fusion.co_tokenizer import clip_time_embedding
from vqa_components.fusion.concat_self_attention import ConcatSelfAttentionFusion
from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures

B, L, DT, D = 2, 5, 10, 16
STREAMS = [(4, 2, 6), (2, 3, 8)]  # (frames, positions per frame, width)


def text() -> TextFeatures:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(B, L, DT, generator=g)
    return TextFeatures(tokens, tokens[:, 0], torch.tensor([[True] * L, [True] * 3 + [False] * 2]))


def stream(t: int, n: int, d: int, seed: int, mask: torch.Tensor | None = None) -> VideoFeatures:
    tokens = torch.randn(B, t, n, d, generator=torch.Generator().manual_seed(seed))
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2), frame_mask=mask)


def two_streams(seed: int = 0, mask: torch.Tensor | None = None) -> VideoFeatures:
    a = stream(*STREAMS[0], seed)
    b = stream(*STREAMS[1], seed + 1, mask)
    return VideoFeatures(tokens=a.tokens, cls=a.cls, streams=(a, b))


def old_forward(f: ConcatSelfAttentionFusion, video: VideoFeatures, q: TextFeatures):
    """The single-stream forward of the previous version, written out from its parameters."""
    b, t, n, _ = video.tokens.shape
    x = torch.cat(
        [
            f.cls.expand(b, -1, -1),
            f.text_proj(q.tokens) + f.type_embed[0],
            f.video_proj(video.tokens.reshape(b, t * n, -1)) + f.type_embed[1],
        ],
        dim=1,
    )
    v_pad = (
        torch.zeros(b, t * n, dtype=torch.bool)
        if video.frame_mask is None
        else ~video.frame_mask.repeat_interleave(n, 1)
    )
    pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), ~q.mask, v_pad], 1)
    for block in f.blocks:
        x = block(x, key_padding_mask=pad)
    return f.norm(x), ~pad


OLD_KEYS = {
    "text_proj.weight",
    "text_proj.bias",
    "video_proj.weight",
    "video_proj.bias",
    "cls",
    "type_embed",
    "norm.weight",
    "norm.bias",
}


def test_single_stream_is_unchanged():
    torch.manual_seed(0)
    f = ConcatSelfAttentionFusion(6, DT, dim=D, num_layers=2, num_heads=2).eval()
    assert {k for k in f.state_dict() if not k.startswith("blocks.")} == OLD_KEYS  # old checkpoints load
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    video = stream(4, 2, 6, 0, mask)
    out = f(video, text())
    tokens, valid = old_forward(f, video, text())
    torch.testing.assert_close(out.tokens, tokens)
    torch.testing.assert_close(out.pooled, tokens[:, 0])
    assert torch.equal(out.mask, valid) and out.extras == {}
    # the same stream given as a one-stream tuple
    wrapped = video.replace(streams=(video,))
    torch.testing.assert_close(f(wrapped, text()).tokens, tokens)
    # same seed, same initial weights as before (the extra-stream parameters are created last)
    torch.manual_seed(0)
    g = ConcatSelfAttentionFusion(6, DT, dim=D, num_layers=2, num_heads=2, time_embedding=True)
    assert all(torch.equal(g.state_dict()[k], v) for k, v in f.state_dict().items())


def test_all_streams_join_the_sequence():
    torch.manual_seed(0)
    f = ConcatSelfAttentionFusion([6, 8], DT, dim=D, num_heads=2).eval()
    assert f.video_proj.in_features == 6 and f.extra_video_proj[0].in_features == 8
    assert f.stream_embed.shape == (2, D)
    mask = torch.tensor([[True, False], [True, True]])
    video = two_streams(mask=mask)
    out = f(video, text())
    n0, n1 = 4 * 2, 2 * 3
    assert out.tokens.shape == (B, 1 + L + n0 + n1, D)
    assert out.extras["stream_bounds"] == [(1 + L, 1 + L + n0), (1 + L + n0, 1 + L + n0 + n1)]
    assert not out.mask[0, -3:].any() and out.mask[1, -3:].all()  # stream 1's padded frame (3 positions)
    # the second stream is read (the previous version dropped it)
    other = two_streams(mask=mask)
    other.streams[1].tokens[1] += 1.0
    changed = f(other, text())
    assert not torch.allclose(changed.pooled[1], out.pooled[1])
    torch.testing.assert_close(changed.pooled[0], out.pooled[0])  # other samples untouched
    # padded frames do not count
    padded = two_streams(mask=mask)
    padded.streams[1].tokens[0, 1] = 50.0
    torch.testing.assert_close(f(padded, text()).pooled, out.pooled)
    # hand check of stream 1's input tokens: its own linear layer and stream embedding
    seen = {}
    f.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    f(video, text())
    s1 = video.streams[1].tokens.reshape(B, n1, 8)
    expected = (
        s1 @ f.extra_video_proj[0].weight.T + f.extra_video_proj[0].bias + f.type_embed[1] + f.stream_embed[1]
    )
    torch.testing.assert_close(seen["x"][:, 1 + L + n0 :], expected)


def test_equal_widths_still_get_one_linear_layer_per_stream():
    f = ConcatSelfAttentionFusion(6, DT, dim=D, num_heads=2, num_streams=2)
    assert f.video_dims == [6, 6] and f.extra_video_proj[0] is not f.video_proj
    a, b = stream(4, 2, 6, 0), stream(2, 3, 6, 1)
    out = f(VideoFeatures(tokens=a.tokens, cls=a.cls, streams=(a, b)), text())
    assert out.tokens.shape == (B, 1 + L + 8 + 6, D)


def test_time_embedding_adds_clip_time_without_parameters():
    torch.manual_seed(0)
    f = ConcatSelfAttentionFusion([6, 8], DT, dim=D, num_heads=2, time_embedding=True).eval()
    seen = {}
    f.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    video = two_streams()
    f(video, text())
    s1 = video.streams[1].tokens.reshape(B, 6, 8)
    tau = torch.tensor([0.25, 0.75]).repeat_interleave(3)  # 2 frames x 3 positions
    expected = (
        s1 @ f.extra_video_proj[0].weight.T
        + f.extra_video_proj[0].bias
        + f.type_embed[1]
        + f.stream_embed[1]
        + clip_time_embedding(tau, D)
    )
    torch.testing.assert_close(seen["x"][:, 1 + L + 8 :], expected)


def test_stream_count_and_width_mismatches_raise():
    single = ConcatSelfAttentionFusion(6, DT, dim=D, num_heads=2)
    with pytest.raises(ConfigError, match="got 2 video stream.*built for 1.*video_dim"):
        single(two_streams(), text())
    two = ConcatSelfAttentionFusion([6, 9], DT, dim=D, num_heads=2)
    with pytest.raises(ConfigError, match="stream 1 has width 8, video_dim says 9"):
        two(two_streams(), text())
    with pytest.raises(ConfigError, match="num_streams"):
        ConcatSelfAttentionFusion([6, 8], DT, num_streams=3)


def test_backward_reaches_every_stream_projection():
    f = ConcatSelfAttentionFusion([6, 8], DT, dim=D, num_heads=2)
    video = two_streams()
    for s in video.streams:
        s.tokens.requires_grad_(True)
    (f(video, text()).pooled * torch.randn(B, D)).sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(s.tokens.grad.abs().sum() > 0 for s in video.streams)
