"""Matched video-text pairs of a forward, shared by the VideoDistill objectives (``vtm``, ``vg_mlm``,
``contrastive``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vqa_components.interfaces import ModelOutput


def matched_pairs(model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> tuple[Tensor, list[str]]:
    """The rows of ``out`` that are matched video-text pairs, and the text of each.

    Default forward: every row, with the texts ``batch[model.text_field]``.
    Multiple-choice forward (the head's ``task`` is ``multiple_choice`` and the
    batch has ``options``; ``out`` then holds ``b * options`` pairs): the row of
    each question's correct option (``answer_idx``), with the text the model
    encoded for it, ``f"{question} {option}"``; questions without an answer
    (``answer_idx < 0`` or no ``answer_idx``) are left out.

    Returns:
        ``rows`` ``(p,)`` long indices into ``out``'s batch dimension, and ``p`` texts.
    """
    device = out.fused.pooled.device
    if getattr(model.head, "task", None) == "multiple_choice" and "options" in batch:
        options: list[list[str]] = batch["options"]
        n = len(options[0]) if options else 0
        answers = batch.get("answer_idx")
        answers = [-1] * len(options) if answers is None else [int(a) for a in answers]
        rows, texts = [], []
        for i, (q, opts, a) in enumerate(zip(batch["question"], options, answers)):
            if 0 <= a < len(opts):
                rows.append(i * n + a)
                texts.append(f"{q} {opts[a]}")
        return torch.tensor(rows, dtype=torch.long, device=device), texts
    texts = [str(t) for t in batch[model.text_field]]
    if len(texts) != out.fused.pooled.shape[0]:
        raise ValueError(
            f"{len(texts)} texts in batch[{model.text_field!r}] but the forward has "
            f"{out.fused.pooled.shape[0]} video-text pairs"
        )
    return torch.arange(len(texts), device=device), texts
