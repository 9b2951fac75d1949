"""Every head task has its entry in the metrics' table (checked here: metrics do not import the interfaces)."""

from vqa_components.interfaces import HEAD_TASKS
from vqa_components.metrics import TASK_METRICS


def test_every_head_task_has_a_metric_entry():
    assert set(TASK_METRICS) == set(HEAD_TASKS)
