"""Mean squared error of predicted counts (TGIF-QA Count), exact under DDP.

TGIF-QA (Jang et al., CVPR 2017) scores its repetition-count task by the mean squared error
between the predicted and the true count (1 to 10). The papers regress the count: a one-number
output trained with an L2 loss; the code most TGIF-QA tables come from (HCRN's evaluation, kept
by its successors such as MSPAN) rounds the output to the nearest integer (``floor(x + 0.5)``)
and clamps it to ``[1, 10]`` before taking the error. Here the count is an answer over the vocabulary of training counts (a
classifier, the ``classify`` task) or generated text, and its value is what is scored:

* an answer index: the count its vocabulary entry names (``"3"`` -> 3);
* generated text: the number it reads as (``"3"``, ``" 3."``);
* then rounded and clamped to ``count_range`` (``[1, 10]``), as the papers' code does; a
  classifier's counts are training counts already, so this changes nothing for it;
* an answer that is not a number (a non-numeric vocabulary entry or generated word) gets the
  largest error the range allows for its question, ``max((c - lo)², (hi - c)²)``: it is
  counted, never dropped.

The metric is the papers'; the training differs from theirs (cross-entropy over the counts
instead of a regression loss), which is a choice of the model, not of the metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

#: TGIF-QA's counts (the range the papers' code clamps predictions to).
COUNT_RANGE = (1, 10)


def _number(text: str) -> float:
    try:
        value = float(str(text).strip().rstrip("."))
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def count_values(answer_vocab: Sequence[str]) -> Tensor:
    """``(c,)`` the count each vocabulary entry names, ``nan`` for an entry that is not a number."""
    return torch.tensor([_number(a) for a in answer_vocab], dtype=torch.float64)


def predicted_counts(answers: Tensor | Sequence[str], values: Tensor) -> Tensor:
    """``(b,)`` float64 counts of the answers: indices into the vocabulary whose counts are ``values``
    (:func:`count_values`), or generated strings; ``nan`` where an answer is not a number."""
    if isinstance(answers, Tensor):
        idx = answers.reshape(-1).long().cpu()
        ok = (idx >= 0) & (idx < values.numel())
        out = torch.full(idx.shape, math.nan, dtype=torch.float64)
        out[ok] = values[idx[ok]]
        return out
    return torch.tensor([_number(a) for a in answers], dtype=torch.float64)


class CountError(Metric):
    """Mean squared error of counts (see the module docstring): sums of squared errors and of
    questions, summed across ranks.

    Args:
        count_range: ``(lo, hi)`` predictions are clamped to (TGIF-QA's ``[1, 10]``).

    ``compute()`` returns ``{"count_mse": ..., "count_samples": n}``.
    """

    full_state_update = False

    def __init__(self, count_range: tuple[int, int] = COUNT_RANGE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lo, self.hi = float(count_range[0]), float(count_range[1])
        self.add_state("squared_error", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, target: Tensor) -> None:
        """``predicted``: ``(b,)`` counts (``nan`` for an answer that is not a number); ``target``: ``(b,)`` true counts."""
        device = self.squared_error.device
        predicted = predicted.reshape(-1).to(device, torch.float64)
        target = torch.as_tensor(target).reshape(-1).to(device, torch.float64)
        if predicted.numel() != target.numel():
            raise ValueError(f"CountError: {predicted.numel()} predictions but {target.numel()} counts")
        error = (torch.floor(predicted + 0.5).clamp(self.lo, self.hi) - target) ** 2
        worst = torch.maximum((target - self.lo) ** 2, (self.hi - target) ** 2)
        error = torch.where(torch.isnan(predicted), worst, error)
        self.squared_error += error.sum()
        self.total += error.numel()

    def compute(self) -> dict[str, Tensor]:
        return {"count_mse": self.squared_error / self.total.clamp(min=1), "count_samples": self.total.round().long()}
