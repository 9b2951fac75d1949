"""CLIP's byte-pair tokenizer, as shipped inside ``open_clip`` (no download needed)."""

from __future__ import annotations

import torch
from torch import Tensor


class ClipBPETokenizer:
    """Wraps ``open_clip``'s ``SimpleTokenizer`` (49,408-token BPE vocabulary).

    CLIP's vocabulary has no mask token, so one id is appended after it
    (``mask_token_id = 49408``) for masked-language objectives; models using
    this tokenizer size their embedding ``vocab_size = 49409``.

    ``__call__(texts) -> {"input_ids": (b, l), "attention_mask": (b, l)}``
    where ``l`` is the longest sequence in the batch (at most
    ``context_length``), ``<start>`` and ``<end>`` included, padded with 0.
    """

    def __init__(self, context_length: int = 77) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.sot_token_id = self._tok.sot_token_id
        self.eot_token_id = self._tok.eot_token_id
        self.pad_token_id = 0
        self.mask_token_id = len(self._tok.encoder)
        self.vocab_size = self.mask_token_id + 1
        self.special_token_ids = (self.pad_token_id, self.sot_token_id, self.eot_token_id, self.mask_token_id)

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        ids = self._tok(list(texts))  # (b, context_length), eot kept when truncating
        eot = (ids == self.eot_token_id).int().argmax(-1)
        length = int(eot.max()) + 1
        ids = ids[:, :length].contiguous()
        mask = torch.arange(length)[None, :] <= eot[:, None]
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: list[int]) -> str:
        keep = [i for i in ids if i not in self.special_token_ids]
        return self._tok.decode(keep).strip()
