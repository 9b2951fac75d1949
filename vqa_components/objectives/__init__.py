"""Training objectives: (model, batch, ModelOutput) -> {"loss": ...}.

The package imports none of its parts, so that importing one part does not import the others and
their libraries (``vqa ask`` builds only the parts of the model it answers with). The registry
imports the modules named in ``PARTS`` when a part is looked up by name (``import_builtin_parts``).
"""

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
