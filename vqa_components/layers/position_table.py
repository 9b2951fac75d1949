"""Learnable position tables that stretch to inputs longer than the table."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_table(table: Tensor, n: int) -> Tensor:
    """First ``n`` rows of a learnable position table ``(max, d)``, or its linear interpolation to ``n``
    rows when ``n`` exceeds the table."""
    if n <= table.shape[0]:
        return table[:n]
    return F.interpolate(table.T[None], size=n, mode="linear", align_corners=True)[0].T
