"""Video backbones: ``(b, t, 3, h, w)`` pixels -> :class:`~vqa_components.interfaces.VideoFeatures`."""

from vqa_components.backbones import (  # noqa: F401
    blind,
    frame_cnn,
    multi_stream,
    x3d,
)
from vqa_components.backbones import open_clip as _open_clip  # noqa: F401
from vqa_components.backbones import timm as _timm  # noqa: F401
