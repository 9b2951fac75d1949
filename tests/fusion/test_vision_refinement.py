"""vision_refinement fusion: LA-Gates + divided space-time blocks over the selected frames."""

from __future__ import annotations

import pytest
import torch

from vqa_components.fusion.vision_refinement import VisionRefinement
from vqa_components.interfaces import ConfigError, TextFeatures, VideoFeatures

B, K, N, DV, DT, D = 2, 3, 4, 12, 10, 16


def inputs(seed=0, requires_grad=False):
    torch.manual_seed(seed)
    tokens = torch.randn(B, K, N, DV, requires_grad=requires_grad)
    q = torch.randn(B, 5, DT)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    return VideoFeatures(tokens=tokens, cls=tokens.mean(2)), TextFeatures(q, q[:, 0], mask)


def refinement(**kw):
    torch.manual_seed(0)
    args = {"dim": D, "num_layers": 2, "num_heads": 2, "max_frames": 8, "max_tokens_per_frame": 8}
    args.update(kw)
    return VisionRefinement(DV, DT, **args)


def test_shapes_mask_and_gates():
    f = refinement()
    assert VisionRefinement.registry_name == "vision_refinement" and f.out_dim == D
    v, q = inputs()
    out = f(v, q)
    assert out.pooled.shape == (B, D) and out.tokens.shape == (B, 1 + K * N, D) and out.mask is None
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])  # the final v_cls*
    gates = out.extras["gates"]
    assert len(gates) == 2 and all(g.shape == (B, 2, 1 + K * N) for g in gates)
    out = f(v.replace(frame_mask=torch.tensor([[True, True, False], [True] * 3])), q)
    assert out.mask.shape == (B, 1 + K * N)
    assert out.mask[0, 0] and out.mask[0, 1 : 1 + 2 * N].all() and not out.mask[0, 1 + 2 * N :].any()
    assert out.mask[1].all()


@pytest.mark.parametrize("gate", ["la_gate", "cross_attention"])
def test_the_question_changes_the_output(gate):
    f = refinement(gate=gate)
    v, q = inputs()
    _, q2 = inputs(seed=1)
    assert not torch.allclose(f(v, q).pooled, f(v, q2).pooled, atol=1e-4)
    # only the LA-Gate reports gates; cross-attention has none
    assert len(f(v, q).extras["gates"]) == (0 if gate == "cross_attention" else 2)  # one per layer
    q3 = TextFeatures(q.tokens.clone(), q.cls, q.mask)
    q3.tokens[1, 3:] = 50.0  # padding tokens of sample 1 do not count, whichever gate reads the question
    torch.testing.assert_close(f(v, q3).pooled, f(v, q).pooled)


def test_without_gates_the_question_is_ignored():
    f = refinement(gate="none")
    v, q = inputs()
    _, q2 = inputs(seed=1)
    out = f(v, q)
    torch.testing.assert_close(out.pooled, f(v, q2).pooled)
    assert out.extras["gates"] == []
    with pytest.raises(ValueError, match="gate"):
        refinement(gate="bogus")


def test_gradients_reach_every_parameter_and_the_frames():
    f = refinement()
    v, q = inputs(requires_grad=True)
    out = f(v, q)
    (out.pooled * torch.randn_like(out.pooled)).sum().backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert v.tokens.grad.abs().sum() > 0
    assert f.temporal_embed.grad[K:].abs().sum() == 0  # only the first K rows are used


def test_padded_frames_do_not_change_the_pooled_vector():
    f = refinement()
    v, q = inputs()
    fm = torch.tensor([[True, True, False], [True] * 3])
    tokens = v.tokens.clone()
    tokens[0, 2] = 10 * torch.randn(N, DV)
    a, b = f(v.replace(frame_mask=fm), q), f(v.replace(tokens=tokens, frame_mask=fm), q)
    torch.testing.assert_close(a.pooled, b.pooled)
    assert not torch.allclose(f(v, q).pooled[0], f(v.replace(tokens=tokens), q).pooled[0])


def test_frame_order_matters_and_long_inputs_interpolate_the_tables():
    f = refinement()
    v, q = inputs()
    flipped = v.replace(tokens=v.tokens.flip(1), cls=v.cls.flip(1))
    assert not torch.allclose(f(v, q).pooled, f(flipped, q).pooled, atol=1e-5)  # temporal embedding
    small = refinement(max_frames=2, max_tokens_per_frame=2)
    assert small(v, q).tokens.shape == (B, 1 + K * N, D)


def _reference(
    f: VisionRefinement, v: VideoFeatures, q: TextFeatures, order: str = "gate_first"
) -> torch.Tensor:
    """The refinement written out step by step (one sample at a time): embeddings added token by token
    (temporal row k for frame k, spatial row p for position p; no embedding on the CLS), then per block
    the LA-Gate on t_cls followed by divided space-time attention whose spatial output is added to the
    gate's *input* (Frozen in Time's skip form), then the final LayerNorm."""
    outs = []
    for s in range(B):
        rows = [f.cls[0, 0]]
        for k in range(K):
            for p in range(N):
                rows.append(
                    v.tokens[s, k, p] @ f.video_proj.weight.T
                    + f.video_proj.bias
                    + f.temporal_embed[k]
                    + f.spatial_embed[p]
                )
        x = torch.stack(rows)[None]
        t = q.cls[s : s + 1]
        for gate, block in zip(f.gates, f.blocks):
            if order == "gate_first":
                x = block(gate(x, t), K, stream=x)
            else:  # the other order, to show that the order is what the test checks
                x = gate(block(x, K), t)
        outs.append(f.norm(x)[0])
    return torch.stack(outs)


def test_values_gate_then_space_time_attention_with_the_embeddings_added():
    f = refinement().eval()
    v, q = inputs(3)
    with torch.no_grad():
        out = f(v, q)
        expected = _reference(f, v, q)
        torch.testing.assert_close(out.tokens, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pooled, expected[:, 0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out.tokens, _reference(f, v, q, order="attention_first"), atol=1e-3)
        # the embeddings are in the computation: moving one spatial row changes the output (by a
        # random vector: a constant shift of every channel would be erased by the LayerNorms)
        f.spatial_embed[1] += torch.randn(D)
        assert not torch.allclose(f(v, q).tokens, out.tokens, atol=1e-3)


def test_sequential_residual_form_adds_the_gate_output_to_the_stream():
    f = refinement(residual="sequential").eval()
    v, q = inputs(4)
    with torch.no_grad():
        x = torch.cat(
            [
                f.cls.expand(B, -1, -1),
                (f.video_proj(v.tokens) + f.temporal_embed[:K, None] + f.spatial_embed[:N]).reshape(
                    B, K * N, D
                ),
            ],
            1,
        )
        for gate, block in zip(f.gates, f.blocks):
            x = block(gate(x, q.cls), K)
        torch.testing.assert_close(f(v, q).tokens, f.norm(x), atol=1e-5, rtol=1e-5)
        fit = refinement().eval()
        assert not torch.allclose(fit(v, q).tokens, f(v, q).tokens, atol=1e-3)


def test_several_streams_raise_instead_of_being_dropped():
    v, q = inputs()
    other = VideoFeatures(tokens=torch.randn(B, 2, 5, DV), cls=torch.randn(B, 2, DV))
    with pytest.raises(
        ConfigError, match=r"^fusion vision_refinement reads the tokens of one stream, .* gives 3 streams"
    ):
        refinement()(v.replace(streams=(v, other, other)), q)
