"""Divided space-time attention: output values against a token-by-token computation, and which tokens each step may mix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqa_components.layers import DividedSpaceTimeBlock

B, T, N, D = 2, 3, 4, 8


def _tokens(seed=0):
    torch.manual_seed(seed)
    return torch.randn(B, 1 + T * N, D)


def _bump(x, i):
    """``x`` with token ``i`` moved by a random vector (not a constant shift, which LayerNorm would erase)."""
    x = x.clone()
    x[:, i] += 2.0 * torch.randn(x.shape[0], D)
    return x


def _changed(a, b):
    """(b, t, n) bool of patch tokens that differ, and (b,) for the CLS."""
    diff = (a - b).abs().amax(-1) > 1e-5
    return diff[:, 1:].reshape(B, T, N), diff[:, 0]


@pytest.fixture
def block():
    torch.manual_seed(0)
    return DividedSpaceTimeBlock(D, num_heads=2).eval()


# --- a token-by-token reference, written from the definitions (no code of the block reused) ---


def _attend(attn, xn, keys_of):
    """Multi-head attention of one sample's normalized tokens ``xn (m, d)``: token ``i`` attends to
    the token indices ``keys_of(i)``; one qkv and one output projection for all (``attn``'s weights)."""
    m, d = xn.shape
    h = attn.num_heads
    e = d // h
    q, k, v = (xn @ attn.qkv.weight.T + attn.qkv.bias).split(d, dim=-1)
    out = torch.zeros(m, d)
    for i in range(m):
        keys = keys_of(i)
        for head in range(h):
            sl = slice(head * e, (head + 1) * e)
            scores = torch.stack([q[i, sl] @ k[j, sl] for j in keys]) / math.sqrt(e)
            w = torch.softmax(scores, 0)
            out[i, sl] = sum(w[a] * v[j, sl] for a, j in enumerate(keys))
    return out @ attn.proj.weight.T + attn.proj.bias


def _token(f, p):
    return 1 + f * N + p


def _temporal_keys(i):
    if i == 0:
        return list(range(1 + T * N))  # the CLS attends to every token
    p = (i - 1) % N
    return [0] + [_token(f, p) for f in range(T)]  # CLS + the same position in every frame


def _spatial_keys(i):
    if i == 0:
        return list(range(1 + T * N))
    f = (i - 1) // N
    return [0] + [_token(f, p) for p in range(N)]  # CLS + every position of the same frame


def _ln(norm, x):
    return F.layer_norm(x, (D,), norm.weight, norm.bias, norm.eps)


def _mlp(mlp, x):
    return mlp[3](F.gelu(mlp[0](x)))


def _reference(block, x, residual, stream=None):
    """One sample ``x (m, d)`` through the block, written step by step."""
    temporal = _attend(block.attn_t, _ln(block.norm_t, x), _temporal_keys)
    y = x + temporal
    spatial = _attend(block.attn_s, _ln(block.norm_s, y), _spatial_keys)
    if residual == "frozen_in_time":  # x + Spatial(LN(x + Temporal(LN(x))))
        out = (x if stream is None else stream) + spatial
    else:  # TimeSformer: y + Spatial(LN(y))
        out = y + spatial
    return out + _mlp(block.mlp, _ln(block.norm_m, out))


@pytest.mark.parametrize("residual", ["frozen_in_time", "sequential"])
def test_output_values_match_the_token_by_token_computation(residual):
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(D, num_heads=2, residual=residual).eval()
    for p in block.parameters():  # LayerNorm affine away from (1, 0) so that it is exercised
        p.data.add_(0.1 * torch.randn_like(p))
    x = _tokens(5)
    with torch.no_grad():
        got = block(x, T)
        for i in range(B):
            torch.testing.assert_close(got[i], _reference(block, x[i], residual), atol=1e-5, rtol=1e-5)


def test_the_two_residual_forms_differ_and_frozen_in_time_is_the_default():
    torch.manual_seed(0)
    fit = DividedSpaceTimeBlock(D, num_heads=2).eval()
    seq = DividedSpaceTimeBlock(D, num_heads=2, residual="sequential").eval()
    seq.load_state_dict(fit.state_dict())
    x = _tokens(6)
    with torch.no_grad():
        a, b = fit(x, T), seq(x, T)
        torch.testing.assert_close(a[0], _reference(fit, x[0], "frozen_in_time"), atol=1e-5, rtol=1e-5)
    # the sequential form carries the temporal output in the stream: the difference is exactly it,
    # up to the MLP of two different inputs, so it is not small
    assert (a - b).abs().max() > 1e-2


def test_stream_is_the_residual_the_spatial_output_is_added_to(block):
    x, u = _tokens(7), _tokens(8)
    with torch.no_grad():
        got = block(u, T, stream=x)
        for i in range(B):
            torch.testing.assert_close(
                got[i], _reference(block, u[i], "frozen_in_time", stream=x[i]), atol=1e-5, rtol=1e-5
            )
    seq = DividedSpaceTimeBlock(D, num_heads=2, residual="sequential")
    with pytest.raises(ValueError, match="stream"):
        seq(u, T, stream=x)
    with pytest.raises(ValueError, match="residual form"):
        DividedSpaceTimeBlock(D, num_heads=2, residual="timesformer")


def _temporal_step(block, x):
    return x + block.temporal_attention(x, T)


def _spatial_step(block, x):
    return x + block.spatial_attention(x, T)


def test_temporal_step_mixes_only_same_spatial_position(block):
    x = _tokens()
    f, p = 1, 2
    x2 = _bump(x, 1 + f * N + p)
    patches, cls = _changed(_temporal_step(block, x), _temporal_step(block, x2))
    expected = torch.zeros(B, T, N, dtype=torch.bool)
    expected[:, :, p] = True  # every frame at position p, nothing else
    assert torch.equal(patches, expected)
    assert cls.all()  # the CLS query attends to every token


def test_spatial_step_mixes_only_within_a_frame(block):
    x = _tokens(1)
    f, p = 2, 0
    x2 = _bump(x, 1 + f * N + p)
    patches, cls = _changed(_spatial_step(block, x), _spatial_step(block, x2))
    expected = torch.zeros(B, T, N, dtype=torch.bool)
    expected[:, f] = True  # every position of frame f, nothing else
    assert torch.equal(patches, expected)
    assert cls.all()


def test_cls_reaches_every_token_in_both_steps(block):
    x = _tokens(2)
    x2 = _bump(x, 0)
    for step in (_temporal_step, _spatial_step):
        patches, _ = _changed(step(block, x), step(block, x2))
        assert patches.all()


def test_full_block_mixes_across_space_and_time(block):
    x = _tokens(3)
    x2 = _bump(x, 1)  # frame 0, position 0
    patches, cls = _changed(block(x, T), block(x2, T))
    assert patches.all() and cls.all()  # temporal then spatial reaches every token


def test_padded_frames_do_not_affect_real_tokens(block):
    x = _tokens(4)
    frame_mask = torch.tensor([[True, True, False], [True, True, True]])
    x2 = x.clone()
    x2[0, 1 + 2 * N :] = 10 * torch.randn(N, D)  # content of sample 0's padded frame
    y, y2 = block(x, T, frame_mask), block(x2, T, frame_mask)
    torch.testing.assert_close(y[0, : 1 + 2 * N], y2[0, : 1 + 2 * N])
    torch.testing.assert_close(y[1], y2[1])
    assert not torch.allclose(block(x, T)[0, 0], block(x2, T)[0, 0])  # unmasked, it would matter


def test_shapes_gradients_and_bad_length():
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(D, num_heads=2, dropout=0.1)
    x = torch.randn(B, 1 + T * N, D, requires_grad=True)
    y = block(x, T)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="frames"):
        block(torch.randn(B, 1 + T * N + 1, D), T)
