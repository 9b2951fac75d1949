"""Training objectives: (model, batch, ModelOutput) -> {"loss": ...}."""

from vqa_components.objectives import answer_cross_entropy, captioning, contrastive, vg_mlm, vtm  # noqa: F401
from vqa_components.objectives import mlm  # noqa: F401
from vqa_components.objectives import mvm, svq  # noqa: F401
