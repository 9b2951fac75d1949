"""Evenly spaced frame selection."""

from __future__ import annotations

import torch

from vqa_components.interfaces import (
    Sampler,
    SamplerOutput,
    TextFeatures,
    VideoFeatures,
    require_single_stream,
)
from vqa_components.registry import SAMPLERS

#: What a frame sampler says when it is given several streams (:func:`require_single_stream`).
SELECTS_ONE_STREAM = "selects frames of one stream"
NO_SAMPLER = "remove the sampler or use a single-stream backbone"


def uniform_indices(total: int, k: int) -> torch.Tensor:
    """Indices of ``k`` frames at the centres of ``k`` equal segments of ``total`` frames."""
    return ((torch.arange(k, dtype=torch.float64) + 0.5) * total / k).floor().long().clamp_max(total - 1)


@SAMPLERS.register("uniform")
class UniformSampler(Sampler):
    """Keeps ``num_frames`` evenly spaced frames, ignoring the question.

    The baseline of VideoDistill's Table 4 (b). Frames are taken at the centres
    of ``num_frames`` equal segments.

    Args:
        num_frames: ``k``, frames kept.

    Features of several streams (a ``multi_stream`` backbone) raise :class:`ConfigError`: the
    streams have different frame counts, so one selection cannot serve them all.
    """

    def __init__(self, num_frames: int = 16) -> None:
        super().__init__()
        self.num_frames = num_frames

    def forward(self, video: VideoFeatures, text: TextFeatures) -> SamplerOutput:
        require_single_stream(video, f"sampler {self.registry_name}", SELECTS_ONE_STREAM, NO_SAMPLER)
        b, t = video.cls.shape[:2]
        idx = uniform_indices(t, self.num_frames).to(video.cls.device)
        weights = torch.zeros(b, self.num_frames, t, device=video.cls.device, dtype=video.cls.dtype)
        weights[:, torch.arange(self.num_frames), idx] = 1.0
        selected = video.replace(
            tokens=video.tokens[:, idx],
            cls=video.cls[:, idx],
            frame_mask=None if video.frame_mask is None else video.frame_mask[:, idx],
            streams=None,
        )
        return SamplerOutput(video=selected, weights=weights, indices=idx.expand(b, -1))
