"""The pixels a batch carries: ``uint8`` as datasets emit them (4x less to copy between processes), floats for the parts.

Used by the model before its backbone and by the objectives that read the pixels themselves
(``svq``'s tokenizer, ``mvm``'s tagger).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vqa_components.errors import ConfigError


def pixels_to_float(video: Any) -> Any:
    """``uint8`` pixels to floats in ``[0, 1]`` (each tensor of a tuple of streams too); anything else as it is."""
    if isinstance(video, Tensor):
        return video.float().div_(255.0) if video.dtype == torch.uint8 else video
    if isinstance(video, tuple):
        return tuple(pixels_to_float(v) for v in video)
    return video


def one_stream_pixels(video: Any, reader: str) -> Tensor:
    """The float pixels ``(b, t, 3, H, W)`` of a batch's single video stream.

    ``reader`` names what reads them (``"svq: the tokenizer"``); a batch of several streams (a
    tuple) raises :class:`~vqa_components.errors.ConfigError` naming it.
    """
    if not isinstance(video, Tensor):
        raise ConfigError(f"{reader} reads one video stream; batch['video'] is not a tensor")
    return pixels_to_float(video)
