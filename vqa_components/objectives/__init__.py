"""Training objectives: (model, batch, ModelOutput) -> {"loss": ...}."""

from vqa_components.objectives import answer_cross_entropy, captioning, contrastive, vg_mlm, vtm  # noqa: F401
