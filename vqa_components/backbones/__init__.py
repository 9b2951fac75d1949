"""Video backbones: ``(b, t, 3, h, w)`` pixels -> :class:`~vqa_components.interfaces.VideoFeatures`.

The package imports none of its parts, so that importing one part does not import the others and
their libraries (``vqa ask`` builds only the parts of the model it answers with). The registry
imports the modules named in ``PARTS`` when a part is looked up by name (``import_builtin_parts``).
"""

PARTS = (
    "blind",
    "frame_cnn",
    "multi_stream",
    "open_clip",
    "timm",
    "x3d",
)
