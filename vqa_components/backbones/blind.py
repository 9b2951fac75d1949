"""A video input of zeros, for question-only (language-prior) baselines."""

from __future__ import annotations

import torch
from torch import Tensor

from vqa_components.interfaces import Backbone, VideoFeatures
from vqa_components.registry import BACKBONES


@BACKBONES.register("blind")
class BlindBackbone(Backbone):
    """Ignores the pixels and returns all-zero features of the configured shape.

    A model with this backbone can only use the question: its accuracy is the
    language prior of a benchmark (on ``synthetic_vqa``, chance by design).

    Args:
        dim: output width ``d``.
        tokens_per_frame: ``n``; the number of frames follows the input.
    """

    cacheable = True

    def __init__(self, dim: int = 128, tokens_per_frame: int = 1) -> None:
        super().__init__()
        self.out_dim = dim
        self.tokens_per_frame = tokens_per_frame
        self.config = {"dim": dim, "tokens_per_frame": tokens_per_frame}

    def forward(self, video: Tensor | tuple[Tensor, ...]) -> VideoFeatures:
        if isinstance(video, (tuple, list)):
            video = video[0]
        b, t = video.shape[:2]
        tokens = torch.zeros(b, t, self.tokens_per_frame, self.out_dim, device=video.device, dtype=video.dtype)
        return VideoFeatures(tokens=tokens, cls=tokens.mean(2))
