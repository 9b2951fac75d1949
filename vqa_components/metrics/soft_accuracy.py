"""Soft accuracy against several annotators' answers (iVQA).

iVQA (Yang et al., "Just Ask", ICCV 2021) gives five answers per question and scores a predicted
answer ``a`` with::

    score(a) = min(#annotators who gave a / 2, 1)

so two matching annotators give full credit and one gives half (VQA v2's form of the score, with
2 in place of its 3). The heads compute the matches: the classifier compares
its answer index with ``answers_idx`` (the annotators' answers in the vocabulary, ``-1`` for one
outside it, which never matches), the generating head compares normalised text with ``answers``.
"""

from __future__ import annotations

from torch import Tensor

#: Matching annotators for full credit (iVQA's denominator).
FULL_CREDIT = 2


def annotator_agreement(matches: Tensor, full_credit: int = FULL_CREDIT) -> Tensor:
    """``(b,)`` scores ``min(matches.sum(-1) / full_credit, 1)`` from ``(b, k)`` booleans (annotator ``j``
    of sample ``i`` gave the predicted answer)."""
    return (matches.float().sum(-1) / full_credit).clamp(max=1.0)
