"""The two-class video-text matching layer of VideoDistill (section 3.5, eq. 7).

``y = W v_cls* + b``, ``y = (y_nomatch, y_match)`` on the pooled feature ``v_cls*``. The ``vtm``
objective trains it (its own, or the model head's) and the ``vtm_choice`` head scores each
multiple-choice option with it, so one layer serves both and neither imports the other.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

#: index of the "matched" class among the two VTM logits (0 = not matched)
MATCH = 1


class MatchingClassifier(nn.Linear):
    """``(b, d) -> (b, 2)`` the two VTM logits ``(no match, match)``; an ``nn.Linear(in_dim, 2)``."""

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, 2)

    def log_odds(self, pooled: Tensor) -> Tensor:
        """``(b, d) -> (b,)`` ``y_match - y_nomatch = log p(match) - log p(no match)``."""
        y = self(pooled)
        return y[:, MATCH] - y[:, 1 - MATCH]


def head_matching_layer(head: Any) -> MatchingClassifier | None:
    """The model head's two-class layer (``head.proj`` of ``vtm_choice``), or ``None`` if it has none."""
    layer = getattr(head, "proj", None)
    return layer if isinstance(layer, MatchingClassifier) else None
