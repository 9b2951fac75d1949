"""Exact-match normalisation on hand-made cases, and scoring."""

from __future__ import annotations

import pytest

from vqa_components.metrics import normalize_answer
from vqa_components.metrics.exact_match import exact_match


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Red", "red"),
        ("  the  Blue   square. ", "blue square"),
        ("A dog", "dog"),
        ("an apple", "apple"),
        ("theatre", "theatre"),  # an article only as a whole word
        ("don't", "don t"),
        ("don ' t", "don t"),  # how a WordPiece tokenizer decodes it
        ("left-to-right", "left to right"),
        ("Ｒｅｄ", "red"),  # full-width letters (NFKC)
        ("two", "two"),
        ("2", "2"),  # numbers stay as written
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_scores():
    assert exact_match(["Red.", "two cats", "2", "the ball"], ["red", "two  cats", "two", "ball"]).tolist() == [
        1.0, 1.0, 0.0, 1.0,
    ]
    with pytest.raises(ValueError, match="2 predictions but 1 answers"):
        exact_match(["a", "b"], ["a"])
