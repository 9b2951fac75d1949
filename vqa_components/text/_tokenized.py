"""The text encoders whose tokenizer is CLIP's BPE or a ``transformers`` tokenizer: tokenizing and counting written once.

``small_transformer``, ``hf_transformer``, ``bert`` and ``t5`` keep their tokenizer in
``self.tokenizer`` and their limit in ``self.max_length``; :class:`TokenizedTextEncoder` gives
them :meth:`tokenize` and :meth:`token_counter` (:mod:`vqa_components.tokenizers` does the work).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor

from vqa_components.interfaces import TextEncoder, TokenCounter
from vqa_components.tokenizers import count_tokens, encode_batch


class TokenizedTextEncoder(TextEncoder):
    """A :class:`~vqa_components.interfaces.TextEncoder` whose texts are cut at ``max_length`` tokens by ``tokenizer``."""

    tokenizer: Any
    max_length: int

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        device = self._device()
        return {k: v.to(device) for k, v in encode_batch(self.tokenizer, texts, self.max_length).items()}

    def token_counter(self) -> tuple[int, TokenCounter]:
        """``(max_length, count)``: ``count`` is the tokenizer's untruncated count, special tokens included."""
        return self.max_length, partial(count_tokens, self.tokenizer)
