"""Video backbones: ``(b, t, 3, h, w)`` pixels -> :class:`~vqa_components.interfaces.VideoFeatures`."""

from vqa_components.backbones import blind, frame_cnn  # noqa: F401
from vqa_components.backbones import open_clip as _open_clip  # noqa: F401
from vqa_components.backbones import x3d  # noqa: F401
