"""A small transformer text encoder with CLIP's shipped BPE tokenizer."""

from __future__ import annotations

from torch import Tensor, nn

from vqa_components.interfaces import TextFeatures
from vqa_components.layers.transformer import TransformerBlock, masked_mean, sinusoidal_positions
from vqa_components.registry import TEXT_ENCODERS
from vqa_components.text._tokenized import TokenizedTextEncoder
from vqa_components.tokenizers import ClipBPETokenizer


@TEXT_ENCODERS.register("small_transformer")
class SmallTransformerText(TokenizedTextEncoder):
    """Token embedding + fixed sinusoidal positions + ``num_layers`` pre-norm transformer blocks.

    Trains from scratch; the tokenizer is CLIP's BPE vocabulary that ships with
    ``open_clip``, so nothing is downloaded. The sentence feature ``cls`` is the
    masked mean of the final token features followed by a LayerNorm (a choice:
    mean pooling trains faster from scratch than a dedicated CLS token).

    Args:
        dim: width ``d``.
        num_layers: transformer blocks.
        num_heads: attention heads.
        max_length: longest token sequence (``<start>`` and ``<end>`` included).
        dropout: dropout in the blocks.
    """

    fsdp_blocks = ("TransformerBlock",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self, dim: int = 128, num_layers: int = 2, num_heads: int = 4, max_length: int = 32, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.tokenizer = ClipBPETokenizer(context_length=max_length)
        self.max_length = max_length
        self.out_dim = dim
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_token_id = self.tokenizer.pad_token_id
        self.mask_token_id = self.tokenizer.mask_token_id
        self.special_token_ids = self.tokenizer.special_token_ids
        self.embed = nn.Embedding(self.vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=1.0)  # the scale of the sinusoidal positions: words must not drown in them
        self.register_buffer("positions", sinusoidal_positions(max_length, dim), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        mask = attention_mask.bool()
        x = self.embed(input_ids) + self.positions[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_padding_mask=~mask)
        x = self.norm(x)
        return TextFeatures(tokens=x, cls=masked_mean(x, mask), mask=mask, input_ids=input_ids)
