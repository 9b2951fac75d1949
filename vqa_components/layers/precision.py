"""Numerically sensitive steps run in float32, also inside a mixed-precision (autocast) region."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def float32_region(device: torch.device | str) -> Iterator[None]:
    """Turn autocast off for the block: its operations run in the dtype of their inputs (give them float32).

    Used where bf16/fp16 would change results, not just round them: Gumbel top-K selection and
    softmax temperatures (a temperature of 0.07 multiplies rounding errors by 14), cosine
    similarities divided by a temperature, codebook distances.
    """
    device_type = device.type if isinstance(device, torch.device) else str(device)
    with torch.autocast(device_type=device_type, enabled=False):
        yield
