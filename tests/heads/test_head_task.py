"""``Head.task`` is one of a closed set, checked when a head class is defined and when it is assigned."""

from __future__ import annotations

import pytest

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
    class GeneratingHead(Head):
        task = "generate"

    assert GeneratingHead.task == "generate"


def test_assigning_an_unknown_task_fails_and_a_known_one_works():
    head = create("head", "answer_classifier", in_dim=8, num_answers=3)
    with pytest.raises(ValueError, match="unknown head task 'ranking'"):
        head.task = "ranking"
    assert head.task == "classify"
    head.task = "multiple_choice"
    assert head.task == "multiple_choice"
