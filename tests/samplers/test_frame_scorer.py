"""FS-blocks: the skip form of Frozen in Time around the LA-Gate (VideoDistill 3.3), against a step-by-step computation."""

from __future__ import annotations

import pytest
import torch

from vqa_components.interfaces import TextFeatures
from vqa_components.samplers._frame_scorer import FSBlock

B, N, D = 2, 5, 8


def _inputs(seed=0):
    torch.manual_seed(seed)
    v = torch.randn(B, N, D)
    t = torch.randn(B, 3, D)
    return v, TextFeatures(t, t[:, 0], torch.ones(B, 3, dtype=torch.bool))


def _attention_and_mlp(block, x, stream):
    a = block.attn
    h = a.norm1(x)
    y = stream + a.attn(h, h, h, need_weights=False)[0]
    return y + a.mlp(a.norm2(y))


@pytest.mark.parametrize("residual", ["frozen_in_time", "sequential"])
def test_fs_block_values(residual):
    torch.manual_seed(0)
    block = FSBlock(D, D, num_heads=2, residual=residual).eval()
    v, text = _inputs()
    with torch.no_grad():
        out, gates = block(v, text)
        u, g = block.gate(v, text.cls, return_gates=True)
        # frozen_in_time: v + MHSA(LN(Gate(v))): the gate reaches the stream only through the attention
        expected = _attention_and_mlp(block, u, v if residual == "frozen_in_time" else u)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gates, g)
        other = _attention_and_mlp(block, u, u if residual == "frozen_in_time" else v)
        assert not torch.allclose(out, other, atol=1e-3)  # the two forms are told apart


def test_without_a_gate_the_block_is_a_plain_transformer_block():
    torch.manual_seed(0)
    block = FSBlock(D, D, num_heads=2, gate="none").eval()
    v, text = _inputs(1)
    with torch.no_grad():
        out, gates = block(v, text)
        torch.testing.assert_close(out, _attention_and_mlp(block, v, v))
    assert gates is None
