"""uniform sampler: evenly spaced frames, the question ignored; several streams raise."""

from __future__ import annotations

import pytest
import torch

from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures
from vqa_components.samplers.uniform import UniformSampler, uniform_indices

B, T, N, D = 2, 8, 3, 4


def inputs():
    torch.manual_seed(0)
    tokens = torch.randn(B, T, N, D)
    q = torch.randn(B, 2, D)
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2)), TextFeatures(
        q, q[:, 0], torch.ones(B, 2, dtype=torch.bool)
    )


def test_keeps_the_segment_centres():
    v, q = inputs()
    out = UniformSampler(num_frames=4)(v, q)
    assert uniform_indices(T, 4).tolist() == [1, 3, 5, 7]
    assert torch.equal(out.video.tokens, v.tokens[:, [1, 3, 5, 7]])
    assert out.indices.tolist() == [[1, 3, 5, 7]] * B
    assert torch.equal(out.weights.argmax(-1), out.indices) and torch.equal(
        out.weights.sum(-1), torch.ones(B, 4)
    )


def test_several_streams_raise_instead_of_being_dropped():
    v, q = inputs()
    other = VideoFeatures(tokens=torch.randn(B, 2, 5, D), cls=torch.randn(B, 2, D))
    with pytest.raises(ConfigError) as err:
        UniformSampler(num_frames=4)(v.replace(streams=(v, other)), q)
    assert str(err.value) == (
        "sampler uniform selects frames of one stream, but the backbone gives 2 streams (a multi-stream "
        "backbone such as multi_stream): remove the sampler or use a single-stream backbone"
    )
    out = UniformSampler(num_frames=4)(v.replace(streams=(v,)), q)  # one stream: nothing to drop
    assert torch.equal(out.video.tokens, v.tokens[:, [1, 3, 5, 7]])
