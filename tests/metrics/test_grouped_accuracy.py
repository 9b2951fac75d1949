"""GroupedAccuracy: hand-counted values, unknown groups, and the sum across 2 real gloo processes."""

from __future__ import annotations

import pytest
import torch
from helpers import gloo_ranks

from vqa_components.metrics import GroupedAccuracy


def test_counts_overall_and_per_group():
    m = GroupedAccuracy(["spatial", "Motion Q"])
    m.update(torch.tensor([True, False, True]), ["spatial", "spatial", "Motion Q"])
    m.update(torch.tensor([False, True]), ["Motion Q", "other"])  # "other" is not a group: overall only
    out = m.compute()
    assert out["acc"].item() == pytest.approx(3 / 5) and out["num_samples"].item() == 5
    assert out["acc_spatial"].item() == pytest.approx(1 / 2)
    assert out["acc_motion_q"].item() == pytest.approx(1 / 2)
    assert "acc_other" not in out


def test_a_group_without_samples_is_not_reported_and_empty_is_zero():
    m = GroupedAccuracy(["a", "b"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert m.compute()["num_samples"].item() == 0
    m.update(torch.tensor([1, 1]), ["a", "a"])
    out = m.compute()
    assert out["acc_a"].item() == 1.0 and "acc_b" not in out


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 answers but 2 groups"):
        GroupedAccuracy(["a"]).update(torch.tensor([1, 0, 1]), ["a", "a"])


WORKER = """
    import json, os, sys, torch, torch.distributed as dist
    from vqa_components.metrics import GroupedAccuracy
    m = GroupedAccuracy(["spatial", "motion", "needle"])
    if rank == 0:   # rank 0 never sees motion or needle
        m.update(torch.tensor([True, True, False]), ["spatial"] * 3)
    else:           # rank 1 never sees spatial
        m.update(torch.tensor([True, False, False, True, True]), ["motion", "motion", "needle", "needle", "needle"])
    print(json.dumps({k: float(v) for k, v in m.compute().items()}))
"""


@pytest.mark.slow  # several real processes
def test_two_processes_with_disjoint_groups_reduce_to_the_global_counts():
    results = gloo_ranks(WORKER)
    assert results[0] == results[1]  # every rank computes the same totals
    r = results[0]
    assert r["num_samples"] == 8 and r["acc"] == pytest.approx(5 / 8)
    assert r["acc_spatial"] == pytest.approx(2 / 3) and r["acc_motion"] == pytest.approx(1 / 2)
    assert r["acc_needle"] == pytest.approx(2 / 3)


def test_soft_scores_are_averaged_and_out_of_range_is_an_error():
    m = GroupedAccuracy(["a"])
    m.update(torch.tensor([1.0, 0.5, 0.0, 1 / 3]), ["a", "a", "b", "a"])
    out = m.compute()
    assert out["acc"].item() == pytest.approx((1 + 0.5 + 0 + 1 / 3) / 4)
    assert out["acc_a"].item() == pytest.approx((1 + 0.5 + 1 / 3) / 3) and out["num_samples"].item() == 4
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(torch.tensor([1.5]), ["a"])


def test_breakdowns_count_a_question_toward_each_of_its_groups():
    # AGQA-like: family = semantic, structural is one group per question, reasoning a list (multi-label)
    m = GroupedAccuracy(["object", "action"], {"structural": ["verify", "query"], "reasoning": ["exists", "obj-rel", "seq"]})
    m.update(
        torch.tensor([1.0, 0.0, 1.0, 1.0]),
        ["object", "object", "action", "relation"],  # "relation" is not a family: overall only
        {"structural": ["verify", "query", "query", "compare"], "reasoning": [["exists"], ["obj-rel", "seq"], ["seq"], []]},
    )
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["acc"] == pytest.approx(3 / 4) and out["num_samples"] == 4  # each question once overall
    assert out["acc_object"] == pytest.approx(1 / 2) and out["acc_action"] == 1.0
    assert out["acc_structural_verify"] == 1.0 and out["acc_structural_query"] == pytest.approx(1 / 2)
    assert "acc_structural_compare" not in out  # not a listed group
    # exists: q0 (right); obj-rel: q1 (wrong); seq: q1 (wrong) and q2 (right)
    assert out["acc_reasoning_exists"] == 1.0 and out["acc_reasoning_obj_rel"] == 0.0
    assert out["acc_reasoning_seq"] == pytest.approx(1 / 2)


def test_a_breakdown_missing_from_the_batch_is_left_out_and_a_wrong_length_is_an_error():
    m = GroupedAccuracy([], {"question_type": ["CW", "TN"]})
    m.update(torch.tensor([1, 0]), None, {"question_type": None})
    m.update(torch.tensor([1, 0, 1]), None, {"question_type": ["CW", "TN", "TN"]})
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["num_samples"] == 5 and out["acc"] == pytest.approx(3 / 5)
    assert out["acc_question_type_cw"] == 1.0 and out["acc_question_type_tn"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="2 answers but 1 values of 'question_type'"):
        m.update(torch.tensor([1, 0]), None, {"question_type": ["CW"]})
