"""Text encoders: strings -> :class:`~vqa_components.interfaces.TextFeatures`.

The package imports none of its parts, so that importing one part does not import the others and
their libraries (``vqa ask`` builds only the parts of the model it answers with). The registry
imports the modules named in ``PARTS`` when a part is looked up by name (``import_builtin_parts``).
"""

PARTS = (
    "bert",
    "hf_transformer",
    "open_clip",
    "small_transformer",
    "t5",
)
