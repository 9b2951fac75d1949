"""Fusions: (VideoFeatures, TextFeatures) -> :class:`~vqa_components.interfaces.FusionOutput`."""

from vqa_components.fusion import (  # noqa: F401
    co_tokenizer,
    concat_self_attention,
    cross_attention,
    la_gate,
    merged_transformer,
    vision_refinement,
)
