"""Heads: FusionOutput -> :class:`~vqa_components.interfaces.HeadOutput`."""

from vqa_components.heads import answer_classifier, retrieval, text_decoder, vtm_choice  # noqa: F401
