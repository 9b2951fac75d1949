"""The answer metrics of the ``classify``, ``multiple_choice`` and ``generate`` tasks, updated from
the head's own answers and scores."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from vqa_components.metrics.count_error import CountError, count_values, predicted_counts
from vqa_components.metrics.grouped_accuracy import GroupedAccuracy


class AnswerMetrics(Metric):
    """Accuracy (overall, per family, per breakdown: :class:`GroupedAccuracy`) and, for questions
    whose batch carries a true ``count`` (TGIF-QA Count), the mean squared error of the counts
    (:class:`~vqa_components.metrics.count_error.CountError`).

    ``update_from(head, out, batch)`` does what the model asks of every evaluation batch: nothing
    if ``head.has_ground_truth(batch)`` is false; else it takes the head's answers once
    (``head.answers(out)``: argmax, or generated text), its scores (``head.score``: exact, soft
    multi-annotator, ...) and the batch's ``family`` and breakdown fields, and the counts the
    answers name when the batch has ``count``.

    Args:
        groups: the question families.
        breakdowns: ``{field: [group, ...]}`` (see :class:`GroupedAccuracy`).
        answer_vocab: the answer vocabulary (what a classifier's indices name: the counts of a
            count task).

    ``compute()``: :class:`GroupedAccuracy`'s values, plus ``count_mse`` when any question had a count.
    """

    full_state_update = False

    def __init__(
        self,
        groups: Sequence[str] = (),
        breakdowns: Mapping[str, Sequence[str]] | None = None,
        answer_vocab: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.accuracy = GroupedAccuracy(groups, breakdowns)
        self.counts = CountError()
        self._count_values = count_values(answer_vocab)

    def update(self, head: Any, out: Any, batch: dict[str, Any]) -> None:
        if not head.has_ground_truth(batch):
            return
        answers = head.answers(out)
        fields = {name: batch.get(name) for name in self.accuracy.breakdowns}
        self.accuracy.update(head.score(answers, batch), batch.get("family"), fields)
        if "count" in batch:
            self.counts.update(predicted_counts(answers, self._count_values), torch.as_tensor(batch["count"]))

    def update_from(self, head: Any, out: Any, batch: dict[str, Any]) -> None:
        self.update(head, out, batch)

    def compute(self) -> dict[str, Tensor]:
        values = dict(self.accuracy.compute())
        with warnings.catch_warnings():  # no count anywhere on this rank (every task but TGIF-QA Count)
            warnings.filterwarnings("ignore", message=".*before the ``update``")
            counts = self.counts.compute()  # every rank computes both: each is a reduction across ranks
        if counts["count_samples"] > 0:
            values["count_mse"] = counts["count_mse"]
        return values
