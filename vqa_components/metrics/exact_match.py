"""Exact match of generated answers, after one documented normalisation.

``normalize_answer`` is applied to both the generated text and the ground truth:

1. Unicode NFKC, then lower case;
2. every punctuation character becomes a space (not deleted, as SQuAD v1.1's evaluation
   script does: a WordPiece tokenizer decodes ``don't`` as ``don ' t``, and both must read
   ``don t``);
3. the articles ``a``, ``an``, ``the`` are dropped as whole words (as in SQuAD v1.1 and the
   VQA evaluation);
4. runs of whitespace become one space, and the ends are stripped.

Numbers are left as written (``"two"`` and ``"2"`` differ): the benchmarks' answer lists use
one form per dataset, and a model that learns from them emits that form.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import torch
from torch import Tensor

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """The form in which two answers are compared (see the module docstring)."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    text = _ARTICLES.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def annotator_matches(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> Tensor:
    """``(b, k)`` booleans: annotator ``j``'s answer to question ``i`` equals prediction ``i`` (both
    normalised); questions with fewer than ``k`` answers are padded with ``False``."""
    if len(predictions) != len(answers):
        raise ValueError(f"annotator_matches: {len(predictions)} predictions but {len(answers)} answer lists")
    k = max((len(a) for a in answers), default=0)
    rows = []
    for p, given in zip(predictions, answers):
        norm = normalize_answer(p)
        row = [normalize_answer(a) == norm for a in given]
        rows.append(row + [False] * (k - len(row)))
    return torch.tensor(rows, dtype=torch.bool).reshape(len(predictions), k)


def exact_match(predictions: Sequence[str], answers: Sequence[str], device: torch.device | None = None) -> Tensor:
    """``(b,)`` 1.0 where the normalised prediction equals the normalised answer, else 0.0."""
    if len(predictions) != len(answers):
        raise ValueError(f"exact_match: {len(predictions)} predictions but {len(answers)} answers")
    hits = [normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)]
    return torch.tensor(hits, dtype=torch.float32, device=device)
