"""Building blocks shared by several parts (not registered themselves)."""

from vqa_components.layers.transformer import (  # noqa: F401
    MLP,
    CrossAttentionBlock,
    TransformerBlock,
    masked_mean,
    sinusoidal_positions,
)
