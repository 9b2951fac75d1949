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

__all__ = [
    "BACKBONES",
    "DATASETS",
    "FUSIONS",
    "HEADS",
    "OBJECTIVES",
    "REGISTRIES",
    "SAMPLERS",
    "TEXT_ENCODERS",
    "__version__",
    "create",
    "get_registry",
    "list_parts",
    "load_plugins",
]
