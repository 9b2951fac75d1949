"""la_gate fusion: gated video tokens, mean-pooled."""

from __future__ import annotations

import pytest
import torch

from vqa_components.fusion.la_gate import LAGateFusion
from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures

B, T, N, DV, DT = 2, 3, 4, 12, 10


def inputs(seed=0):
    torch.manual_seed(seed)
    tokens = torch.randn(B, T, N, DV)
    q = torch.randn(B, 5, DT)
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2)), TextFeatures(q, q[:, 0], torch.ones(B, 5, dtype=torch.bool))


def fusion(**kw):
    torch.manual_seed(0)
    return LAGateFusion(DV, DT, **{"dim": 16, "num_heads": 2, **kw})


def test_shapes_gates_and_mean_pooling():
    f = fusion(num_layers=2)
    assert LAGateFusion.registry_name == "la_gate" and f.out_dim == 16
    v, q = inputs()
    out = f(v, q)
    assert out.tokens.shape == (B, T * N, 16) and out.pooled.shape == (B, 16) and out.mask is None
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    gates = out.extras["gates"]
    assert len(gates) == 2 and gates[0].shape == (B, 2, T * N)
    assert fusion(dim=None).out_dim == DV


def test_padded_frames_are_left_out_of_the_mean():
    f = fusion()
    v, q = inputs()
    v = v.replace(frame_mask=torch.tensor([[True, True, False], [True, True, True]]))
    out = f(v, q)
    assert out.mask.shape == (B, T * N) and not out.mask[0, 2 * N :].any()
    torch.testing.assert_close(out.pooled[0], out.tokens[0, : 2 * N].mean(0))
    torch.testing.assert_close(out.pooled[1], out.tokens[1].mean(0))


def test_tokens_do_not_mix_and_the_question_matters():
    f = fusion(num_layers=2)
    v, q = inputs()
    out = f(v, q)
    tokens = v.tokens.clone()
    tokens[0, 1, 2] += torch.randn(DV)
    changed = (f(v.replace(tokens=tokens), q).tokens - out.tokens).abs().amax(-1) > 1e-6
    expected = torch.zeros(B, T * N, dtype=torch.bool)
    expected[0, 1 * N + 2] = True
    assert torch.equal(changed, expected)
    _, q2 = inputs(seed=1)
    assert not torch.allclose(f(v, q2).pooled, out.pooled)


def test_gradients_reach_every_parameter():
    f = fusion(num_layers=2)
    v, q = inputs()
    out = f(v, q)
    (out.pooled * torch.randn_like(out.pooled)).sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_several_streams_raise_instead_of_being_dropped():
    v, q = inputs()
    other = VideoFeatures(tokens=torch.randn(B, 2, 5, DV), cls=torch.randn(B, 2, DV))
    with pytest.raises(ConfigError) as err:
        fusion()(v.replace(streams=(v, other)), q)
    message = str(err.value)
    assert message.startswith("fusion la_gate reads the tokens of one stream, but the backbone gives 2 ")
    assert message.endswith("use a fusion that reads every stream (co_tokenizer) or a single-stream backbone")
    out = fusion()(v.replace(streams=(v,)), q)  # one stream is the tokens themselves
    torch.testing.assert_close(out.pooled, fusion()(v, q).pooled)
