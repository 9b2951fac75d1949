"""Heads: FusionOutput -> :class:`~vqa_components.interfaces.HeadOutput`."""

from vqa_components.heads import (  # noqa: F401
    answer_classifier,
    retrieval,
    text_decoder,
    unimodal_retrieval,
    vtm_choice,
)
