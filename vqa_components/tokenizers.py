"""Text tokenizers shared by the text encoders and the ``text_decoder`` head.

Two kinds of tokenizer are used:

* **CLIP's BPE** (:class:`ClipBPETokenizer`): the 49,408-token vocabulary that ships inside
  ``open_clip``, selected by ``tokenizer_path: clip_bpe`` (:data:`CLIP_BPE`);
* **a ``transformers`` tokenizer** from a local folder, a WordPiece ``vocab.txt``, or a Hugging
  Face model id read through the hub cache as ``AutoTokenizer.from_pretrained(id)`` does
  (:func:`load_tokenizer`; nothing is downloaded unless an id is named).

:func:`encode_batch` and :func:`count_tokens` tokenize a batch and count a text's tokens the same
way for both, so that an encoder, the head and the long-question screen
(:meth:`~vqa_components.interfaces.TextEncoder.token_counter`) agree.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqa_components.weights import from_hub, local_or_hub

#: ``tokenizer_path`` value that selects CLIP's BPE vocabulary shipped with open_clip
CLIP_BPE = "clip_bpe"


def clip_bpe_counts(bpe: Any, texts: Sequence[str]) -> list[int]:
    """Untruncated token count of each text under open_clip's ``SimpleTokenizer`` ``bpe``, ``<start>`` and ``<end>`` included."""
    return [len(bpe.encode(t)) + 2 for t in texts]


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

    def count(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count before truncation to ``context_length``."""
        return clip_bpe_counts(self._tok, texts)

    def decode(self, ids: list[int]) -> str:
        keep = [i for i in ids if i not in self.special_token_ids]
        return self._tok.decode(keep).strip()


def load_tokenizer(path: str | Path, owner: str = "hf_transformer") -> Any:
    """A tokenizer from a local folder (``AutoTokenizer``), a WordPiece ``vocab.txt`` file, or a
    Hugging Face model id (``AutoTokenizer.from_pretrained(id)`` through the hub cache; its errors
    as one line, :func:`~vqa_components.weights.from_hub`)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    p = local_or_hub(path, "tokenizer_path", owner)
    if isinstance(p, str):
        return from_hub(lambda: AutoTokenizer.from_pretrained(p), owner, "tokenizer_path", p)
    if p.is_file():
        # transformers >= 5 takes ``vocab`` (a dict or file) and silently ignores ``vocab_file``;
        # 4.x takes ``vocab_file``. Pass what this version understands.
        params = inspect.signature(BertTokenizerFast.__init__).parameters
        lines = p.read_text(encoding="utf-8").splitlines()
        vocab = {tok: i for i, tok in enumerate(line.rstrip("\r") for line in lines) if tok}
        if "vocab" in params:
            tok = BertTokenizerFast(vocab=vocab)
        else:
            tok = BertTokenizerFast(vocab_file=str(p))
        if len(tok) < len(vocab):
            raise ValueError(
                f"{owner}: {p} has {len(vocab)} tokens but the tokenizer built from it has {len(tok)}"
            )
        return tok
    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


def load_tokenizer_or_clip_bpe(
    path: str | Path, owner: str = "hf_transformer", context_length: int = 77
) -> Any:
    """:class:`ClipBPETokenizer` for ``path == "clip_bpe"``, else :func:`load_tokenizer`."""
    return ClipBPETokenizer(context_length) if str(path) == CLIP_BPE else load_tokenizer(path, owner)


def tokenizer_size(tokenizer: Any) -> int:
    """Ids the tokenizer can emit (CLIP BPE: its vocabulary and the mask token)."""
    return tokenizer.vocab_size if isinstance(tokenizer, ClipBPETokenizer) else len(tokenizer)


def encode_batch(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
    """``input_ids`` and a bool ``attention_mask`` ``(b, l)``: texts padded to the longest, cut at ``max_length``.

    A :class:`ClipBPETokenizer` cuts at its own ``context_length`` (built as the encoder's limit).
    """
    if isinstance(tokenizer, ClipBPETokenizer):
        enc = tokenizer(list(texts))
    else:
        enc = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"].bool()}


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Each text's token count before any truncation, special tokens included."""
    if isinstance(tokenizer, ClipBPETokenizer):
        return tokenizer.count(texts)
    return [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]
