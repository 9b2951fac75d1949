"""Mean squared error of counts (TGIF-QA Count): hand values for a classifier's indices, generated
text, rounding and clamping to [1, 10], answers that are not numbers, and through AnswerMetrics."""

from __future__ import annotations

import math

import pytest
import torch

from vqa_components.metrics import AnswerMetrics, CountError
from vqa_components.metrics.count_error import count_values, predicted_counts


def test_a_classifier_index_is_scored_by_the_count_it_names():
    values = count_values(["2", "3", "10", "many"])
    assert values[:3].tolist() == [2.0, 3.0, 10.0] and math.isnan(values[3])
    predicted = predicted_counts(torch.tensor([0, 2, 1, 3]), values)
    m = CountError()
    m.update(predicted, torch.tensor([2, 4, 5, 7]))
    # errors: (2-2)^2 = 0, (10-4)^2 = 36, (3-5)^2 = 4, "many" is no number: max((7-1)^2, (10-7)^2) = 36
    out = m.compute()
    assert out["count_mse"].item() == pytest.approx((0 + 36 + 4 + 36) / 4) and out["count_samples"].item() == 4


def test_generated_counts_are_rounded_half_up_and_clamped_to_1_10():
    predicted = predicted_counts(["3", " 2.5 ", "14", "0", "three", "7."], torch.zeros(0))
    m = CountError()
    m.update(predicted, torch.tensor([3, 3, 9, 2, 4, 7]))
    # 3 -> 0; 2.5 -> 3 -> 0; 14 -> 10 -> 1; 0 -> 1 -> 1; "three" -> max(9, 36) = 36; "7." -> 0
    assert m.compute()["count_mse"].item() == pytest.approx((0 + 0 + 1 + 1 + 36 + 0) / 6)


class _Head:
    """A stand-in head: fixed answers, exact scores."""

    def __init__(self, answers):
        self._answers = answers

    def has_ground_truth(self, batch):
        return "answer_idx" in batch

    def answers(self, out):
        return self._answers

    def score(self, answers, batch):
        return (answers == batch["answer_idx"]).float()


def test_answer_metrics_add_the_count_error_only_where_batches_carry_counts():
    vocab = ["1", "2", "3", "10"]
    m = AnswerMetrics(groups=["count"], answer_vocab=vocab)
    batch = {"answer_idx": torch.tensor([1, 2, -1]), "count": torch.tensor([2, 2, 4]), "family": ["count"] * 3}
    m.update_from(_Head(torch.tensor([1, 3, 0])), None, batch)  # predicts 2, 10, 1
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["count_mse"] == pytest.approx((0 + 64 + 9) / 3)
    assert out["acc"] == pytest.approx(1 / 3) and out["acc_count"] == pytest.approx(1 / 3) and out["num_samples"] == 3
    plain = AnswerMetrics(groups=["a"])
    plain.update_from(_Head(torch.tensor([0])), None, {"answer_idx": torch.tensor([0]), "family": ["a"]})
    assert "count_mse" not in plain.compute()
    nothing = AnswerMetrics()
    nothing.update_from(_Head(torch.tensor([0])), None, {"caption": ["a caption"]})  # no ground truth: not counted
    with pytest.warns(UserWarning):
        assert nothing.compute()["num_samples"].item() == 0
