"""Frame positions, shorter-side resizing and crops (VideoDistill appendix B), on tensors with known values."""

from __future__ import annotations

import pytest
import torch

from vqa_components.data.clip_transforms import (
    ClipTransform,
    crop_frames,
    crop_offsets,
    random_indices,
    resize_short_side,
)
from vqa_components.data.video_io import resize_frames, uniform_indices


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_resize_short_then_centre_crop_of_a_column_ramp():
    # pixel value = 2 x column index. Halving the width with a linear filter maps output column j
    # to input position 2j + 0.5, so the value is 2 (2j + 0.5) = 4j + 1; the 32-wide centre crop
    # of the 64-wide resized frame keeps columns 16..47.
    frames = (2 * torch.arange(128)).to(torch.uint8).expand(2, 3, 64, 128).contiguous()
    resized = resize_short_side(frames, 32)
    assert resized.shape == (2, 3, 32, 64) and resized.dtype == torch.uint8
    out = ClipTransform(resize_short=32, crop_size=32).apply(frames)
    expected = (4 * torch.arange(16, 48) + 1).to(torch.uint8).expand(2, 3, 32, 32)
    assert torch.equal(out, expected)


def test_portrait_frames_keep_their_aspect_ratio():
    # row ramp, 96 x 48 (portrait): the shorter side is the width; rows 12..35 of 48 stay
    frames = (2 * torch.arange(96)).to(torch.uint8)[:, None].expand(1, 3, 96, 48).contiguous()
    out = resize_short_side(frames, 24)
    assert out.shape == (1, 3, 48, 24)
    cropped = crop_frames(out, 24)
    expected = (4 * torch.arange(12, 36) + 1).to(torch.uint8)[:, None].expand(1, 3, 24, 24)
    assert torch.equal(cropped, expected)


def test_resize_short_of_a_square_clip_equals_the_square_frame_size_resize():
    frames = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=_gen(0))
    old = resize_frames(frames.float() / 255.0, 32).mul(255.0).round().to(torch.uint8)  # the frame_size path
    assert torch.equal(resize_short_side(frames, 32), old)
    assert resize_short_side(frames, 64) is frames  # already the right size: untouched


def test_random_crop_is_in_bounds_reproducible_and_covers_every_offset():
    h, w, c = 20, 30, 8
    frame = (100 * torch.arange(h)[:, None] + torch.arange(w)).expand(3, 3, h, w)  # value = 100 row + col
    t = ClipTransform(crop_size=c, random_crop=True)
    tops, lefts = set(), set()
    for seed in range(300):
        out = t((frame,), _gen(seed))[0]
        top, left = divmod(int(out[0, 0, 0, 0]), 100)
        assert 0 <= top <= h - c and 0 <= left <= w - c
        assert torch.equal(out, frame[..., top : top + c, left : left + c])
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(h - c + 1)) and lefts == set(range(w - c + 1))
    same = [t((frame,), _gen(7))[0] for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert not torch.equal(t((frame,), _gen(7))[0], t((frame,), _gen(8))[0])
    # every stream of a clip gets the same relative region
    a, b = t((frame, frame.clone()), _gen(3))
    assert torch.equal(a, b)


def test_crop_offsets_reach_both_corners():
    assert crop_offsets(20, 30, 8, (0.0, 0.0)) == (0, 0)
    assert crop_offsets(20, 30, 8, (0.999999, 0.999999)) == (12, 22)


def test_centre_crop_draws_nothing():
    frame = torch.arange(100).reshape(1, 1, 10, 10).expand(2, 3, 10, 10)
    g = _gen(0)
    state = g.get_state()
    out = ClipTransform(crop_size=4)((frame,), g)[0]
    assert torch.equal(out, frame[..., 3:7, 3:7])
    assert torch.equal(g.get_state(), state)


def test_random_positions_sorted_distinct_in_range_and_seeded():
    draws = [random_indices(64, 16, _gen(seed)) for seed in range(20)]
    for idx in draws:
        assert idx == sorted(idx) and len(set(idx)) == 16 and all(0 <= i < 64 for i in idx)
    assert len({tuple(d) for d in draws}) == 20
    assert random_indices(64, 16, _gen(5)) == draws[5]
    g = _gen(0)
    assert random_indices(64, 16, g) != random_indices(64, 16, g)  # the stream goes on (next epoch)
    # a clip with no more frames than asked: every frame, with uniform repeats
    assert random_indices(6, 6, _gen(0)) == list(range(6))
    assert random_indices(3, 6, _gen(0)) == uniform_indices(3, 6)


def test_crop_larger_than_the_frames_is_refused():
    with pytest.raises(ValueError, match=r"crop_size=16 does not fit in frames of 12x40"):
        crop_frames(torch.zeros(1, 3, 12, 40), 16)
