"""Divided space-time attention: which tokens each step may mix."""

from __future__ import annotations

import pytest
import torch

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


def test_temporal_step_mixes_only_same_spatial_position(block):
    x = _tokens()
    f, p = 1, 2
    x2 = _bump(x, 1 + f * N + p)
    patches, cls = _changed(block.temporal_step(x, T), block.temporal_step(x2, T))
    expected = torch.zeros(B, T, N, dtype=torch.bool)
    expected[:, :, p] = True  # every frame at position p, nothing else
    assert torch.equal(patches, expected)
    assert cls.all()  # the CLS query attends to every token


def test_spatial_step_mixes_only_within_a_frame(block):
    x = _tokens(1)
    f, p = 2, 0
    x2 = _bump(x, 1 + f * N + p)
    patches, cls = _changed(block.spatial_step(x, T), block.spatial_step(x2, T))
    expected = torch.zeros(B, T, N, dtype=torch.bool)
    expected[:, f] = True  # every position of frame f, nothing else
    assert torch.equal(patches, expected)
    assert cls.all()


def test_cls_reaches_every_token_in_both_steps(block):
    x = _tokens(2)
    x2 = _bump(x, 0)
    for step in (block.temporal_step, block.spatial_step):
        patches, _ = _changed(step(x, T), step(x2, T))
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
