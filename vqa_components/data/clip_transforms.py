"""Frame positions and spatial preprocessing of decoded clips (VideoDistill, appendix B).

The paper resizes every clip to 256p keeping the aspect ratio, samples 100 frames at random
positions for pretraining and evenly for downstream tasks, and crops a random 224x224 region.
The dataset options that do this (``VideoQADataset(resize_short=, crop_size=, frame_sampling=)``)
call the functions below::

    file --decode--> (t, 3, H, W) uint8      frame positions: uniform, or random in training
         --resize_short S--> (t, 3, S, W*S/H) shorter side S, aspect ratio kept (antialiased bilinear)
         --crop_size C--> (t, 3, C, C)        random region in training, centre at evaluation;
                                              one region for every frame of the clip

Resizing and cropping are torchvision's (``transforms.v2.functional``); the random draws take an
explicit ``torch.Generator`` (the dataset owns one per process, see ``VideoQADataset``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vqa_components.data.video_io import uniform_indices

#: Values of the ``frame_sampling`` option.
FRAME_SAMPLINGS = ("uniform", "random")
#: Frames resized at once: bounds the float copy of a long clip.
RESIZE_CHUNK = 16


def random_indices(num_available: int, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
    """``num_frames`` distinct frame positions of ``num_available``, drawn at random and sorted.

    A clip with fewer frames than asked has no distinct draw: every frame is then taken, with
    the repeats of :func:`~vqa_components.data.video_io.uniform_indices` (no randomness).

    >>> random_indices(10, 10)
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    if num_available <= 0:
        raise ValueError(f"num_available must be positive, got {num_available}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if num_available <= num_frames:
        return uniform_indices(num_available, num_frames)
    chosen = torch.randperm(num_available, generator=generator)[:num_frames]
    return sorted(chosen.tolist())


def resize_short_side(frames: Tensor, size: int) -> Tensor:
    """Resize ``(t, 3, h, w)`` frames so that the shorter side is ``size``, keeping the aspect ratio.

    The longer side becomes ``int(size * long / short)`` (torchvision's rule). Antialiased bilinear
    interpolation in float, as ``frame_size`` does (:func:`~vqa_components.data.video_io.resize_frames`);
    ``uint8`` frames come back as ``uint8`` (rounded), float frames as float in ``[0, 1]``.
    """
    if min(frames.shape[-2:]) == size:
        return frames
    out = []
    for chunk in frames.split(RESIZE_CHUNK):
        x = chunk.float().div_(255.0) if chunk.dtype == torch.uint8 else chunk
        x = TF.resize(x, [size], interpolation=InterpolationMode.BILINEAR, antialias=True).clamp_(0.0, 1.0)
        out.append(x.mul_(255.0).round_().to(torch.uint8) if frames.dtype == torch.uint8 else x)
    return torch.cat(out)


def crop_offsets(height: int, width: int, size: int, position: tuple[float, float]) -> tuple[int, int]:
    """Top-left corner ``(top, left)`` of a ``size`` x ``size`` crop at relative ``position`` in ``[0, 1)^2``.

    ``(0, 0)`` is the top-left crop; a uniform ``position`` gives every one of the
    ``(height - size + 1) * (width - size + 1)`` crops the same chance.
    """
    top = min(int(position[0] * (height - size + 1)), height - size)
    left = min(int(position[1] * (width - size + 1)), width - size)
    return top, left


def crop_frames(frames: Tensor, size: int, position: tuple[float, float] | None = None) -> Tensor:
    """A ``size`` x ``size`` region of every frame of ``(t, 3, h, w)``: the centre (``position=None``,
    torchvision's ``center_crop``) or the crop at relative ``position`` (see :func:`crop_offsets`).

    Raises:
        ValueError: the frames are smaller than the crop.
    """
    h, w = frames.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"crop_size={size} does not fit in frames of {h}x{w} pixels (h x w)")
    if position is None:
        return TF.center_crop(frames, [size, size])
    top, left = crop_offsets(h, w, size, position)
    return TF.crop(frames, top, left, size, size)


@dataclass(frozen=True)
class ClipTransform:
    """Spatial preprocessing of a decoded clip: shorter side to ``resize_short``, then a ``crop_size`` crop.

    Args:
        resize_short: target of the shorter side; ``None`` keeps the decoded size.
        crop_size: side of the square crop; ``None`` keeps the whole frame.
        random_crop: crop a random region (training) instead of the centre (evaluation).
    """

    resize_short: int | None = None
    crop_size: int | None = None
    random_crop: bool = False

    @property
    def identity(self) -> bool:
        return self.resize_short is None and self.crop_size is None

    def draw_position(self, generator: torch.Generator | None) -> tuple[float, float] | None:
        """The relative crop position of one sample (``None``: centre crop, nothing drawn)."""
        if not self.random_crop or self.crop_size is None:
            return None
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        return float(u[0]), float(u[1])

    def apply(self, frames: Tensor, position: tuple[float, float] | None = None) -> Tensor:
        """Resize and crop one ``(t, 3, h, w)`` stream; ``position`` as in :func:`crop_frames`."""
        if self.resize_short is not None:
            frames = resize_short_side(frames, self.resize_short)
        if self.crop_size is not None:
            frames = crop_frames(frames, self.crop_size, position)
        return frames.contiguous()

    def __call__(self, streams: tuple[Tensor, ...], generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """Every stream of one clip; one drawn position for all of them (the same relative region)."""
        position = self.draw_position(generator)
        return tuple(self.apply(s, position) for s in streams)
