"""Training objectives: (model, batch, ModelOutput) -> {"loss": ...}. ``PARTS``: the modules of the
built-in ones, imported by the registry (``registry.import_builtin_parts``), not here."""

PARTS = (
    "answer_cross_entropy",
    "captioning",
    "contrastive",
    "mlm",
    "mvm",
    "svq",
    "vg_mlm",
    "vtm",
)

from vqa_components.objectives.collection import ObjectiveDict, objective_key  # noqa: F401
