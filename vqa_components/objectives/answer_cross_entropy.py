"""Cross-entropy on the answer (open-ended classes or multiple-choice options)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ModelOutput, Objective
from vqa_components.registry import OBJECTIVES


@OBJECTIVES.register("answer_cross_entropy")
class AnswerCrossEntropy(Objective):
    """``CE(logits, answer_idx)``; answers outside the vocabulary (index -1) are ignored.

    Args:
        weight: scale of this loss in the total.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
    """

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = weight
        self.label_smoothing = label_smoothing

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        target = batch["answer_idx"]
        if (target < 0).all():
            return {"loss": out.logits.sum() * 0.0}
        loss = F.cross_entropy(
            out.logits.float(), target, ignore_index=-1, label_smoothing=self.label_smoothing
        )
        return {"loss": loss}
