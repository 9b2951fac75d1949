"""Training objectives: (model, batch, ModelOutput) -> {"loss": ...}."""

from vqa_components.objectives import (  # noqa: F401
    answer_cross_entropy,
    captioning,
    contrastive,
    mlm,
    mvm,
    svq,
    vg_mlm,
    vtm,
)
from vqa_components.objectives.collection import ObjectiveDict, objective_key  # noqa: F401
