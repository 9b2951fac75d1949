"""vqa-components: interchangeable building blocks for efficient video question answering."""

from vqa_components.registry import (
    BACKBONES,
    DATASETS,
    FUSIONS,
    HEADS,
    OBJECTIVES,
    REGISTRIES,
    SAMPLERS,
    TEXT_ENCODERS,
    create,
    get_registry,
    list_parts,
    load_plugins,
)

__version__ = "0.1.0"

_LAZY = {
    "VideoQAModel": "vqa_components.model",
    "VideoQADataModule": "vqa_components.data.datamodule",
    "profile_model": "vqa_components.profiler",
}


def __getattr__(name: str):  # the Lightning classes import lazily: `import vqa_components` stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqa_components' has no attribute {name!r}")

__all__ = [
    "BACKBONES",
    "DATASETS",
    "FUSIONS",
    "HEADS",
    "OBJECTIVES",
    "REGISTRIES",
    "SAMPLERS",
    "TEXT_ENCODERS",
    "VideoQADataModule",
    "VideoQAModel",
    "__version__",
    "create",
    "get_registry",
    "list_parts",
    "load_plugins",
    "profile_model",
]
