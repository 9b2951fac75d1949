"""Block-wise masking of frame token grids (BEiT, section 2.5) and pixel masking (E-ViLM, section 3.2)."""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

#: a masked block: ``(top, left, height, width)`` in grid cells
Box = tuple[int, int, int, int]


def frame_blocks(
    grid: tuple[int, int],
    ratio: float,
    rng: random.Random,
    min_cells: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
) -> list[Box]:
    """Rectangular blocks whose union covers exactly ``max(1, round(ratio * gh * gw))`` cells of one grid.

    BEiT's procedure: until the target is covered, draw a block of area ``A ~ U(min_cells, left)``
    (``left`` = cells still to mask) and aspect ratio ``r`` log-uniform in ``aspect``, of
    ``round(sqrt(A r))`` rows and ``round(sqrt(A / r))`` columns, at a uniformly random place
    inside the grid; keep it if it masks between 1 and ``left`` new cells (blocks may overlap
    earlier ones), try again otherwise (``attempts`` times).

    Choices not in BEiT (which may stop short of the target when no block fits): when fewer than
    ``min_cells`` cells are left, blocks as small as ``left`` are drawn, and when ``attempts``
    draws all fail, a single unmasked cell (a 1 x 1 block) is masked. So the count is always
    exactly the target, and the mask is always a union of rectangles.

    Args:
        grid: ``(gh, gw)``.
        ratio: fraction of cells to mask, in ``(0, 1]``.
        rng: random source.
        min_cells: smallest block area drawn while at least that many cells are left (BEiT: 16 of
            a 14 x 14 grid; here 4, a 2 x 2 block, for grids as small as 8 x 8).
        aspect: range of the height / width ratio of a block.
        attempts: draws per block before falling back to one cell.

    Returns:
        the blocks, in the order they were placed.
    """
    gh, gw = grid
    target = max(1, round(ratio * gh * gw))
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    taken = [[False] * gw for _ in range(gh)]
    count = 0
    boxes: list[Box] = []
    while count < target:
        left = target - count
        box = None
        for _ in range(attempts):
            area = rng.uniform(min(min_cells, left), left)
            r = math.exp(rng.uniform(log_lo, log_hi))
            h = min(gh, max(1, round(math.sqrt(area * r))))
            w = min(gw, max(1, round(math.sqrt(area / r))))
            top, lft = rng.randint(0, gh - h), rng.randint(0, gw - w)
            new = sum(not taken[i][j] for i in range(top, top + h) for j in range(lft, lft + w))
            if 0 < new <= left:
                box = (top, lft, h, w)
                break
        if box is None:
            free = [(i, j) for i in range(gh) for j in range(gw) if not taken[i][j]]
            i, j = free[rng.randrange(len(free))]
            box = (i, j, 1, 1)
        top, lft, h, w = box
        for i in range(top, top + h):
            for j in range(lft, lft + w):
                count += not taken[i][j]
                taken[i][j] = True
        boxes.append(box)
    return boxes


def block_mask(
    batch: int,
    frames: int,
    grid: tuple[int, int],
    ratio: float = 0.4,
    *,
    min_cells: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(b, t, gh, gw)`` bool, ``True`` at masked cells: block-wise masks drawn independently per frame.

    Every frame gets its own :func:`frame_blocks` mask covering exactly ``max(1, round(ratio * gh *
    gw))`` cells (E-ViLM: 40%, "block-wise masking [6] with masking ratio 40%", section 4).

    Args:
        batch: ``b``.
        frames: ``t``.
        grid: ``(gh, gw)``, the token grid of a frame (:attr:`VideoFeatures.grid`).
        ratio: fraction of each frame's cells to mask, in ``(0, 1]``.
        min_cells: see :func:`frame_blocks`.
        aspect: see :func:`frame_blocks`.
        generator: random source (a CPU ``torch.Generator``; one draw from it seeds the Python
            generator that places the blocks); ``None`` uses torch's global one.
        device: where the mask is returned.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"block_mask: ratio must be in (0, 1], got {ratio}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = random.Random(seed)
    gh, gw = grid
    mask = torch.zeros(batch, frames, gh, gw, dtype=torch.bool)
    for b in range(batch):
        for t in range(frames):
            for top, left, h, w in frame_blocks(grid, ratio, rng, min_cells, aspect):
                mask[b, t, top : top + h, left : left + w] = True
    return mask.to(device) if device is not None else mask


def mask_pixels(video: Tensor, mask: Tensor) -> Tensor:
    """``video (b, t, c, H, W)`` with the pixels of every masked cell of ``mask (b, t, gh, gw)`` set to 0.

    "We randomly mask out video frame patches by replacing them with zero-value pixels" (E-ViLM,
    section 3.2): zero in the pixel values given (black for ``[0, 1]`` floats or ``uint8``).
    Cell ``(i, j)`` covers the pixel rows ``r`` with ``floor(r * gh / H) == i`` and columns ``s``
    with ``floor(s * gw / W) == j``, i.e. ``[i H/gh, (i+1) H/gh) x [j W/gw, (j+1) W/gw)`` as
    :attr:`VideoFeatures.grid` defines it (exact blocks of ``H/gh x W/gw`` pixels when divisible).
    Returns a new tensor; ``video`` is not changed.
    """
    b, t, _, height, width = video.shape
    if mask.shape[:2] != (b, t) or mask.ndim != 4:
        raise ValueError(f"mask_pixels: mask {tuple(mask.shape)} does not fit video {tuple(video.shape)}")
    gh, gw = mask.shape[2:]
    rows = torch.arange(height, device=mask.device) * gh // height
    cols = torch.arange(width, device=mask.device) * gw // width
    pixels = mask.bool()[:, :, rows][:, :, :, cols]  # (b, t, H, W)
    return video.masked_fill(pixels[:, :, None].to(video.device), 0)
