"""cross_attention fusion: text attends to the video tokens of one stream; several streams raise."""

from __future__ import annotations

import pytest
import torch

from vqa_components.fusion.cross_attention import CrossAttentionFusion
from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures

B, T, N, DV, DT = 2, 3, 4, 12, 10


def inputs(seed=0):
    torch.manual_seed(seed)
    tokens = torch.randn(B, T, N, DV)
    q = torch.randn(B, 5, DT)
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2)), TextFeatures(
        q, q[:, 0], torch.ones(B, 5, dtype=torch.bool)
    )


def fusion():
    torch.manual_seed(0)
    return CrossAttentionFusion(DV, DT, dim=16, num_layers=1, num_heads=2).eval()


def test_several_streams_raise_instead_of_being_dropped():
    v, q = inputs()
    other = VideoFeatures(tokens=torch.randn(B, 2, 5, DV), cls=torch.randn(B, 2, DV))
    with pytest.raises(ConfigError) as err:
        fusion()(v.replace(streams=(v, other)), q)
    assert str(err.value) == (
        "fusion cross_attention reads the tokens of one stream, but the backbone gives 2 streams (a multi-stream "
        "backbone such as multi_stream): use a fusion that reads every stream (co_tokenizer) or a single-stream backbone"
    )
    with torch.no_grad():  # one stream: the tokens are that stream
        torch.testing.assert_close(fusion()(v.replace(streams=(v,)), q).pooled, fusion()(v, q).pooled)
