"""``Head.task`` is one of a closed set, checked when a head class is defined and when it is assigned."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vqa_components import create
from vqa_components.interfaces import HEAD_TASKS, ConfigError, Head
from vqa_components.registry import HEADS


def test_every_registered_head_has_a_known_task():
    tasks = {HEADS.get(name).task for name in HEADS.names()}
    assert tasks <= set(HEAD_TASKS)
    assert tasks == set(HEAD_TASKS)  # every task has a head


def test_a_head_class_with_an_unknown_task_fails_when_defined():
    with pytest.raises(ConfigError) as err:

        class MisspeltHead(Head):
            task = "retreival"

    msg = str(err.value)
    assert "MisspeltHead" in msg and "'retreival'" in msg and "did you mean 'retrieval'" in msg
    assert all(task in msg for task in HEAD_TASKS) and "\n" not in msg


def test_a_head_that_generates_is_defined_by_its_task():
    from vqa_components.model import VideoQAModel

    class GeneratingHead(Head):
        task = "generate"

    class ClassifyingHead(Head):
        pass

    # the task is what the model reads: a generating head trains on the batch's answer strings
    batch = {"answer": ["red", "two cats"], "answer_idx": torch.tensor([0, 1])}
    assert VideoQAModel.targets(SimpleNamespace(head=GeneratingHead()), batch) == ["red", "two cats"]
    assert VideoQAModel.targets(SimpleNamespace(head=ClassifyingHead()), batch) is None


def test_assigning_an_unknown_task_fails_and_a_known_one_works():
    head = create("head", "answer_classifier", in_dim=8, num_answers=3)
    # a classifier scores iVQA's annotators' answers with the soft accuracy min(#agreeing / 2, 1)
    batch = {"answer_idx": torch.tensor([0, 1]), "answers_idx": torch.tensor([[0, 0, 2], [2, 2, 1]])}
    answers = torch.tensor([0, 1])
    soft = [1.0, 0.5]
    with pytest.raises(ValueError, match="unknown head task 'ranking'"):
        head.task = "ranking"
    # the refused value changed nothing: the head still scores as a classifier
    assert head.score(answers, batch).tolist() == soft and head.has_ground_truth(batch)
    head.task = "multiple_choice"
    # as multiple choice it needs the options to have ground truth, and scores exact matches
    assert not head.has_ground_truth(batch) and head.has_ground_truth({**batch, "options": [["a", "b"]] * 2})
    assert head.score(torch.tensor([0, 2]), batch).tolist() == [1.0, 0.0]
