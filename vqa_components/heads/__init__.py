"""Heads: FusionOutput -> :class:`~vqa_components.interfaces.HeadOutput`. ``PARTS``: the modules of the
built-in ones, imported by the registry (``registry.import_builtin_parts``), not here."""

PARTS = (
    "answer_classifier",
    "retrieval",
    "text_decoder",
    "unimodal_retrieval",
    "vtm_choice",
)
