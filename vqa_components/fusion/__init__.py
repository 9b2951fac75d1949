"""Fusions: (VideoFeatures, TextFeatures) -> :class:`~vqa_components.interfaces.FusionOutput`."""

from vqa_components.fusion import concat_self_attention, cross_attention  # noqa: F401
