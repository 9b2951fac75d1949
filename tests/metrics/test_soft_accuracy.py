"""iVQA's soft accuracy min(#annotators who gave the answer / 2, 1): hand counts, through the
classifier's default score (answer indices) and the generating head's (normalised text)."""

from __future__ import annotations

import pytest
import torch

from vqa_components import create
from vqa_components.metrics import annotator_agreement
from vqa_components.metrics.exact_match import annotator_matches


def test_values_against_hand_counts():
    matches = torch.tensor([
        [False, False, False, False, False],  # nobody: 0
        [True, False, False, False, False],   # one annotator: 1/2
        [True, True, False, False, False],    # two: 1
        [True, True, True, True, True],       # five: still 1
    ])  # fmt: skip
    assert annotator_agreement(matches).tolist() == [0.0, 0.5, 1.0, 1.0]


def test_the_classifier_scores_its_index_against_every_annotator():
    head = create("head", "answer_classifier", in_dim=8, num_answers=5)
    # vocabulary: onion 0, spoon 1, onions 2, soup 3, spatula 4; -1: an answer outside it
    batch = {
        "answer_idx": torch.tensor([3, 0, 1, -1]),
        "answers_idx": [[-1, 3, 3, -1, 3], [0, 0, 0, -1, -1], [0, 1, 1, 1, -1], [-1, -1, -1, -1, -1]],
    }
    answers = torch.tensor([0, 0, 0, 0])  # "onion" for every question
    # soup x3: 0; onion x3: 1; onion x1: 1/2; nothing known: 0  (exact match would give 0, 1, 0, 0)
    assert head.score(answers, batch).tolist() == [0.0, 1.0, 0.5, 0.0]
    assert head.score(answers, {"answer_idx": batch["answer_idx"]}).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_the_generating_head_compares_normalised_text(minilm_folder):
    head = create("head", "text_decoder", in_dim=16, tokenizer_path=str(minilm_folder),
                  config={"d_model": 16, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 32})  # fmt: skip
    answers = [["Onion", "onion.", "onions", "an onion", "leek"], ["soup", "water", "water", "oil", "soup"]]
    assert annotator_matches(["the onion", "oil"], answers).tolist() == [
        [True, True, False, True, False], [False, False, False, True, False]]  # fmt: skip
    batch = {"answer": ["onion", "soup"], "answers": answers}
    assert head.score(["the onion", "oil"], batch).tolist() == [1.0, 0.5]
    assert head.score(["the onion", "oil"], {"answer": ["onion", "soup"]}).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 predictions but 1 answer lists"):
        annotator_matches(["a", "b"], [["a"]])
