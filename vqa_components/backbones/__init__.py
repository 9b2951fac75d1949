"""Video backbones: ``(b, t, 3, h, w)`` pixels -> :class:`~vqa_components.interfaces.VideoFeatures`.

``PARTS``: the modules of the built-in ones, imported by the registry
(``registry.import_builtin_parts``), not here."""

PARTS = (
    "blind",
    "frame_cnn",
    "multi_stream",
    "open_clip",
    "timm",
    "x3d",
)
