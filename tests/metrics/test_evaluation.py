"""AnswerEvaluation, the callback every VideoQAModel brings to its trainer: the head task's metric of
each evaluation stage, fed by the validation and test steps and logged at the epoch's end."""

from __future__ import annotations

import pytest
import torch
from helpers import D, tiny_model
from helpers import tiny_batch as batch

from vqa_components import create
from vqa_components.metrics.evaluation import AnswerEvaluation


def evaluate(model, data: dict) -> None:
    """One validation step and the epoch's end, as the trainer runs them with AnswerEvaluation."""
    evaluation = AnswerEvaluation()
    evaluation.update(model, model.validation_step(data, 0), data, "val")
    evaluation.log_epoch(model, "val")


def test_a_generating_head_trains_on_answer_text_and_is_scored_by_its_exact_match(minilm_folder, monkeypatch):
    """The model passes the answers to a generating head, and its accuracy is the head's exact match."""
    import torch.nn.functional as F

    head = create("head", "text_decoder", in_dim=D, tokenizer_path=str(minilm_folder),
                  config={"d_model": D, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 2 * D})
    model = tiny_model(head=head)
    model.families = ["a", "b"]
    data = {**batch(), "answer": ["Red", "three", "left"]}
    out = model(data)
    labels = head.target_ids(data["answer"])
    assert torch.equal(out.head.target_ids, labels)
    loss = model.loss(data, out, "train")
    assert torch.allclose(loss, F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100))
    assert model(batch()).head.target_ids is None  # no answers (e.g. prediction): no targets

    monkeypatch.setattr(head, "generate", lambda fused, num_beams=None: ["red.", "two", "left"])
    logged = {}
    monkeypatch.setattr(model, "log", lambda key, value, **kw: logged.__setitem__(key, float(torch.as_tensor(value).detach())))
    evaluate(model, data)
    assert logged["val/acc"] == pytest.approx(2 / 3) and logged["val/num_samples"] == 3
    assert logged["val/acc_a"] == 1.0 and logged["val/acc_b"] == 0.0  # families a, b, a
    preds = model.predict_step(data, 0)
    assert [p["prediction"] for p in preds] == ["red.", "two", "left"]


def test_a_model_without_ground_truth_logs_no_accuracy(monkeypatch):
    model = tiny_model(head=create("head", "retrieval", video_dim=D, text_dim=D, embed_dim=D),
                       objectives=[create("objective", "contrastive", video_dim=D, text_dim=D)])
    logged = {}
    monkeypatch.setattr(model, "log", lambda key, value, **kw: logged.__setitem__(key, float(torch.as_tensor(value).detach())))
    evaluate(model, batch())
    assert "val/loss" in logged and not any(k.startswith("val/acc") for k in logged)
    # its metric ranks the pairs instead (hand-checked values: tests/metrics/test_retrieval.py)
    assert logged["val/num_samples"] == 3 and {"val/t2v_r1", "val/v2t_r10", "val/t2v_median_rank"} <= set(logged)
    # a classifier on data without answers (e.g. pretraining captions)
    model = tiny_model(objectives=[create("objective", "contrastive", video_dim=D, text_dim=D)])
    logged.clear()
    monkeypatch.setattr(model, "log", lambda key, value, **kw: logged.__setitem__(key, float(torch.as_tensor(value).detach())))
    evaluate(model, {k: v for k, v in batch().items() if k != "answer_idx"})
    assert "val/loss" in logged and not any(k.startswith("val/acc") for k in logged)


