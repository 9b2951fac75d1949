"""Learnable position tables: truncation and linear stretching."""

from __future__ import annotations

import torch

from vqa_components.layers.position_table import resize_table


def test_shorter_inputs_take_the_first_rows():
    t = torch.randn(5, 3)
    assert torch.equal(resize_table(t, 3), t[:3])
    assert torch.equal(resize_table(t, 5), t)


def test_longer_inputs_interpolate_linearly_end_to_end():
    t = torch.arange(4.0)[:, None] * torch.tensor([[1.0, -2.0]])
    out = resize_table(t, 7)
    expected = torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3])[:, None] * torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(out, expected)
