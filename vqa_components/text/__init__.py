"""Text encoders: strings -> :class:`~vqa_components.interfaces.TextFeatures`. ``PARTS``: the modules of the
built-in ones, imported by the registry (``registry.import_builtin_parts``), not here."""

PARTS = (
    "bert",
    "hf_transformer",
    "open_clip",
    "small_transformer",
    "t5",
)
