"""Cross-entropy on the answer: open-ended classes, multiple-choice options, or generated answer tokens."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, HeadOutput, ModelOutput, Objective
from vqa_components.registry import OBJECTIVES

#: target id that ``token_cross_entropy`` ignores (padding of generated targets)
IGNORE = -100


def no_answers_error(dataset: str) -> ConfigError:
    """The one line for data without answers (a caption corpus) under ``answer_cross_entropy``."""
    return ConfigError(
        f"objective answer_cross_entropy needs each sample's answer_idx (the answer's class, or the right "
        f"option's position), which question-answering datasets give (synthetic_vqa, videoqa_json, msrvtt_qa, "
        f"msvd_qa, tgif_qa, nextqa, msrvtt_mc, ...); {dataset} has no answers (a caption corpus such as webvid "
        f"or video_text_jsonl): train on captions with objectives such as vtm, mlm or contrastive"
    )


def token_cross_entropy(head: HeadOutput, label_smoothing: float = 0.0) -> Tensor:
    """Teacher-forced cross-entropy of a generating head: mean over the target tokens (padding ignored)."""
    if head.target_ids is None:
        raise ValueError("a generating head's output has no target_ids: the model gave the head no targets")
    logits = head.logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), head.target_ids.reshape(-1), ignore_index=IGNORE,
        label_smoothing=label_smoothing,
    )


@OBJECTIVES.register("answer_cross_entropy")
class AnswerCrossEntropy(Objective):
    """``CE(logits, answer_idx)``; answers outside the vocabulary (index -1) are ignored.

    With a generating head (``task: generate``) the answer is text: the loss is the teacher-forced
    cross-entropy of the answer's tokens (:func:`token_cross_entropy`; every answer counts, as a
    generating head has no vocabulary to fall outside of).

    Args:
        weight: scale of this loss in the total.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
    """

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = weight
        self.label_smoothing = label_smoothing

    def check_data(self, kind: str, dataset: str, head: Any) -> None:
        """Stop at start-up where the data has no answers, or has no options for a multiple-choice head."""
        if kind == "captions":
            raise no_answers_error(f"dataset {dataset}")
        task = getattr(head, "task", None)
        if task == "multiple_choice" and kind in ("open_ended", "count"):
            name = getattr(head, "registry_name", type(head).__name__)
            raise ConfigError(
                f"head {name} scores the options of multiple-choice questions, but dataset {dataset} has none "
                f"(its answer_idx indexes an answer vocabulary): objective answer_cross_entropy would compare "
                f"one score per question with it; use model.head: {{name: answer_classifier, in_dim: ..., "
                f"num_answers: ...}}"
            )

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        if out.head.target_ids is not None:
            return {"loss": token_cross_entropy(out.head, self.label_smoothing)}
        if "answer_idx" not in batch:
            raise no_answers_error("this batch")
        target = batch["answer_idx"]
        if (target < 0).all():
            return {"loss": out.logits.sum() * 0.0}
        loss = F.cross_entropy(
            out.logits.float(), target, ignore_index=-1, label_smoothing=self.label_smoothing
        )
        return {"loss": loss}
