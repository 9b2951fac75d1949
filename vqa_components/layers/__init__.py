"""Building blocks shared by several parts (not registered themselves)."""

from vqa_components.layers.divided_space_time import DividedSpaceTimeBlock, GroupedAttention  # noqa: F401
from vqa_components.layers.la_gate import CrossAttentionGate, LAGate  # noqa: F401
from vqa_components.layers.transformer import (  # noqa: F401
    MLP,
    CrossAttentionBlock,
    TransformerBlock,
    masked_mean,
    sinusoidal_positions,
)
