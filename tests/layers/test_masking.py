"""Block-wise masks (exact ratio, unions of rectangles, per frame, seeded) and pixel masking."""

from __future__ import annotations

import random

import pytest
import torch

from vqa_components.layers.masking import block_mask, frame_blocks, mask_pixels


def _components(cells: torch.Tensor) -> int:
    """Number of 4-connected components of a 2-d bool grid."""
    seen = torch.zeros_like(cells)
    gh, gw = cells.shape
    count = 0
    for i in range(gh):
        for j in range(gw):
            if cells[i, j] and not seen[i, j]:
                count += 1
                stack = [(i, j)]
                seen[i, j] = True
                while stack:
                    a, b = stack.pop()
                    for u, v in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= u < gh and 0 <= v < gw and cells[u, v] and not seen[u, v]:
                            seen[u, v] = True
                            stack.append((u, v))
    return count


@pytest.mark.parametrize("grid", [(8, 8), (4, 4), (14, 14), (6, 10)])
def test_every_frame_masks_the_requested_ratio(grid):
    """Each frame masks exactly round(0.4 * cells): within 0.5 / cells of 40%, on every one of many draws."""
    cells = grid[0] * grid[1]
    mask = block_mask(50, 4, grid, 0.4, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (50, 4, *grid) and mask.dtype == torch.bool
    per_frame = mask.flatten(2).float().mean(-1)
    assert (per_frame - 0.4).abs().max().item() <= 0.5 / cells + 1e-6
    assert (mask.flatten(2).sum(-1) == round(0.4 * cells)).all()


def test_blocks_are_rectangles_whose_union_is_the_mask_and_the_mask_is_contiguous():
    rng = random.Random(0)
    block_components, random_components = [], []
    for _ in range(200):
        boxes = frame_blocks((8, 8), 0.4, rng)
        cells = torch.zeros(8, 8, dtype=torch.bool)
        for top, left, h, w in boxes:
            assert h >= 1 and w >= 1 and top >= 0 and left >= 0 and top + h <= 8 and left + w <= 8
            cells[top : top + h, left : left + w] = True
        assert cells.sum() == 26  # the union of the rectangles is exactly the target
        block_components.append(_components(cells))
        scattered = torch.zeros(64, dtype=torch.bool)
        g = torch.Generator().manual_seed(len(random_components))
        scattered[torch.randperm(64, generator=g)[:26]] = True
        random_components.append(_components(scattered.view(8, 8)))
    # blocks, not scattered cells: far fewer connected pieces than the same number of random cells
    mean_blocks = sum(block_components) / len(block_components)
    assert mean_blocks < 0.5 * sum(random_components) / len(random_components)
    assert mean_blocks < 4


def test_masks_are_seeded_and_drawn_per_frame():
    a = block_mask(3, 4, (8, 8), generator=torch.Generator().manual_seed(5))
    b = block_mask(3, 4, (8, 8), generator=torch.Generator().manual_seed(5))
    c = block_mask(3, 4, (8, 8), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    frames = a.flatten(0, 1)
    assert len({tuple(f.flatten().tolist()) for f in frames}) > 1  # not one mask repeated over frames


def test_ratio_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="ratio"):
        block_mask(1, 1, (4, 4), 0.0)


def test_mask_pixels_zeroes_exactly_the_masked_blocks():
    video = torch.rand(2, 3, 3, 32, 32) + 0.1  # no zero pixels before masking
    mask = block_mask(2, 3, (4, 4), 0.4, generator=torch.Generator().manual_seed(0))
    assert mask.any() and not mask.all()  # both branches below run
    out = mask_pixels(video, mask)
    for b in range(2):
        for t in range(3):
            for i in range(4):
                for j in range(4):
                    block = out[b, t, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
                    if mask[b, t, i, j]:
                        assert (block == 0).all()
                    else:
                        assert torch.equal(block, video[b, t, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8])
    assert (video > 0).all()  # the input is not changed
    as_uint8 = mask_pixels((video * 200).to(torch.uint8), mask)
    assert as_uint8.dtype == torch.uint8 and torch.equal(as_uint8 == 0, out == 0)


def test_mask_pixels_partitions_frames_that_are_not_multiples_of_the_grid():
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 2] = True
    out = mask_pixels(torch.ones(1, 1, 3, 30, 30), mask)
    zero = out[0, 0, 0] == 0
    rows, cols = torch.nonzero(zero, as_tuple=True)
    # cell (1, 2) of a 4 x 4 grid over 30 px: rows 7.5..15 -> 8..14, columns 15..22.5 -> 15..22
    assert rows.min() == 8 and rows.max() == 14 and cols.min() == 15 and cols.max() == 22
    assert zero.sum() == 7 * 8
