"""Training objectives: (model, batch, ModelOutput) -> {"loss": ...}."""

from vqa_components.objectives import answer_cross_entropy, contrastive, vg_mlm, vtm  # noqa: F401
