"""Fusions: (VideoFeatures, TextFeatures) -> :class:`~vqa_components.interfaces.FusionOutput`.

``PARTS``: the modules of the built-in ones, imported by the registry
(``registry.import_builtin_parts``), not here."""

PARTS = (
    "co_tokenizer",
    "concat_self_attention",
    "cross_attention",
    "la_gate",
    "merged_transformer",
    "vision_refinement",
)
