"""CLIP text tower from ``open_clip`` as a text encoder.

VideoDistill (section 3.1) encodes questions and captions with CLIP's text
encoder, *trained* during pretraining and fine-tuning, and reads word-level
embeddings ``t_word (M, D)`` and a sentence-level ``t_cls (D)``::

    "what is the man holding?"
      │ CLIP BPE (shipped with open_clip, no download): [SOT] w1 .. wk [EOT] pad..
      ▼
    token_embedding + pos ─► causal transformer ─► ln_final ─► text_projection
                                                                 │
                          every position ─► tokens (b, l, D) ◄───┤
                          the EOT position ─► cls (b, D) ◄───────┘   (as CLIP does)

Choices the paper leaves open:

* **Projection.** With ``project=True`` (default) every position goes through
  ``text_projection``, so words, sentence and the image backbone
  (:mod:`vqa_components.backbones.open_clip`) live in CLIP's joint space
  (512-d for ViT-B/16) and ``cls`` equals ``model.encode_text``.
* **Mask token.** CLIP's vocabulary (49408 ids) has no ``[MASK]``; masked
  language objectives need one. The token embedding gets one extra row, id
  49408, initialised to the mean of the other rows (a neutral, in-distribution
  start); ``vocab_size`` is 49409. Loading a CLIP checkpoint (49408 rows) sets
  that row to the mean of the loaded rows.
* **EOT position** is found by id, not by ``argmax`` as CLIP does, because the
  mask id is larger than EOT.
* **Mask / length.** ``attention_mask`` is ``True`` up to and including EOT.
  ``tokenize`` trims the batch to its longest sequence; because the transformer
  is causal, real positions are unaffected by the padding after them.
* Pads use id 0, as CLIP does.

Weights: random init by default. ``pretrained`` (an open_clip tag of ``model_name``: ``openai``,
``laion2b_s34b_b88k``, ...) or ``model_name: hf-hub:ORG/NAME`` reads open_clip's pretrained
weights through the Hugging Face hub cache as ``open_clip.create_model(model_name,
pretrained=tag)`` finds them (``HF_HUB_OFFLINE=1``: the cache only; missing: one line naming the
id, the cache and ``hf download ...``; :func:`vqa_components.weights.open_clip_pretrained`);
``weights_source`` is then ``hf-hub:REPO/FILE``. ``checkpoint`` (a local file) wins over the tag's
file. Nothing is downloaded unless a pretrained name is given.

Supported family: towers with CLIP's BPE tokenizer and the causal
``TextTransformer`` (``ViT-*``, ``RN*``, ``convnext_*`` CLIP configs).
Hugging Face text towers, SigLIP tokenizers and CoCa's appended CLS raise
``ValueError``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqa_components.interfaces import TextEncoder, TextFeatures, TokenCounter
from vqa_components.layers.open_clip import build_open_clip_model, load_and_freeze
from vqa_components.registry import TEXT_ENCODERS
from vqa_components.tokenizers import clip_bpe_counts
from vqa_components.weights import load_weights, open_clip_pretrained

CLIP_VOCAB_SIZE = 49408
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0
MASK_TOKEN_ID = CLIP_VOCAB_SIZE  # the extra row

_TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


@TEXT_ENCODERS.register("open_clip")
class OpenClipTextEncoder(TextEncoder):
    """Word tokens and EOT sentence feature of an open_clip CLIP text tower (VideoDistill's text branch).

    Args:
        model_name: an open_clip architecture, e.g. ``"ViT-B-16"``, or ``"hf-hub:ORG/NAME"``.
        checkpoint: local weights file or folder (a full CLIP state dict or a
            text-only one); wins over ``pretrained``. Neither: the random init.
        pretrained: an open_clip pretrained tag of ``model_name`` (``"openai"``), read through
            the Hugging Face hub cache.
        frozen: no gradients and eval mode (VideoDistill trains it: default ``False``).
        context_length: maximum tokens, SOT and EOT included; default the
            model's own (CLIP: 77). A shorter one truncates a loaded
            position embedding (exact, the tower is causal).
        project: apply ``text_projection`` to every position (joint space).
        model_config: a custom open_clip config dict instead of a named one.

    ``forward`` returns word tokens ``(b, l, out_dim)`` (every position) and ``cls`` ``(b, out_dim)``
    = the EOT position's feature; both post-``text_projection`` with ``project=True``
    (``out_dim = embed_dim``), else ``width``.

    Special ids: SOT 49406, EOT 49407, pad 0, mask 49408 (an extra embedding row; ``vocab_size`` 49409).
    """

    fsdp_blocks = ("ResidualAttentionBlock",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        checkpoint: str | None = None,
        frozen: bool = False,
        context_length: int | None = None,
        project: bool = True,
        model_config: dict[str, Any] | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import TextTransformer

        hub = open_clip_pretrained(model_name, pretrained, "open_clip text encoder", model_config, checkpoint)
        model = build_open_clip_model(
            hub.model_name if hub else model_name, hub.model_config if hub else model_config,
            context_length=context_length, quick_gelu=bool(hub and hub.quick_gelu),
        )
        tower: nn.Module = model.text if hasattr(model, "text") else model
        if hasattr(model, "text") and not isinstance(model.text, TextTransformer):
            raise ValueError(
                f"open_clip text encoder supports CLIP's own TextTransformer; {model_name!r} has a "
                f"{type(model.text).__name__} text tower"
            )
        vocab = tower.token_embedding.num_embeddings
        pool = getattr(tower, "pool_type", getattr(tower, "text_pool_type", "argmax"))
        if vocab != CLIP_VOCAB_SIZE or pool not in ("argmax", "eos") or getattr(tower, "cls_emb", None) is not None:
            raise ValueError(
                f"open_clip text encoder supports CLIP-BPE text towers (vocab {CLIP_VOCAB_SIZE}, EOT pooling); "
                f"{model_name!r} has vocab {vocab}, pool_type {pool!r}"
            )
        if getattr(tower, "attn_mask", None) is None:
            raise ValueError(f"open_clip text encoder needs a causal text tower; {model_name!r} has none")
        for name in _TEXT_PARTS:
            setattr(self, name, getattr(tower, name))
        del model, tower
        self.context_length = self.positional_embedding.shape[0]
        self.register_buffer(
            "attn_mask",
            torch.full((self.context_length, self.context_length), float("-inf")).triu_(1),
            persistent=False,
        )
        self._add_mask_row()
        self.tokenizer = SimpleTokenizer(context_length=self.context_length)
        self.model_name = model_name
        self.project = project
        self.frozen = frozen
        width = self.token_embedding.embedding_dim
        proj = self.text_projection
        if project and proj is not None:
            self.out_dim = int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])
        else:
            self.out_dim = width
        self.vocab_size = CLIP_VOCAB_SIZE + 1
        self.pad_token_id = PAD_TOKEN_ID
        self.mask_token_id = MASK_TOKEN_ID
        self.special_token_ids = (SOT_TOKEN_ID, EOT_TOKEN_ID, PAD_TOKEN_ID, MASK_TOKEN_ID)
        self.config = {
            "model_name": model_name,
            "model_config": model_config,
            "context_length": self.context_length,
            "project": project,
        }
        if hub and hub.quick_gelu:
            self.config["quick_gelu"] = True
        self.pretrained = pretrained
        load_and_freeze(self, checkpoint, frozen, hub.file if hub else None, hub.source if hub else None)

    def _add_mask_row(self) -> None:
        old = self.token_embedding
        emb = nn.Embedding(CLIP_VOCAB_SIZE + 1, old.embedding_dim, dtype=old.weight.dtype)
        with torch.no_grad():
            emb.weight[:CLIP_VOCAB_SIZE] = old.weight
            emb.weight[MASK_TOKEN_ID] = old.weight.mean(0)
        self.token_embedding = emb

    # ---------------------------------------------------------------- weights
    def load_checkpoint(self, checkpoint: str | Path) -> None:
        """Load text-tower weights (strict) from a full CLIP, CustomTextCLIP (``text.``) or text-only state dict."""

        def adapt(state: dict[str, Tensor]) -> dict[str, Tensor]:
            if any(k.startswith("text.") for k in state):
                state = {k[len("text.") :]: v for k, v in state.items() if k.startswith("text.")}
            else:
                drop = ("visual.", "logit_scale", "logit_bias", "input_resolution", "context_length", "vocab_size")
                state = {k: v for k, v in state.items() if not k.startswith(drop)}
            emb = state.get("token_embedding.weight")
            if emb is not None and emb.shape[0] == CLIP_VOCAB_SIZE:  # a CLIP file: add the mask row
                state["token_embedding.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])
            pe = state.get("positional_embedding")
            if pe is not None and pe.ndim == 2 and pe.shape[0] > self.context_length:
                state["positional_embedding"] = pe[: self.context_length]  # exact: the tower is causal
            return state

        path = load_weights(self, checkpoint, f"open_clip {self.model_name} text tower", adapt=adapt)
        self.weights_source = str(path)

    def train(self, mode: bool = True) -> OpenClipTextEncoder:
        return super().train(mode and not self.frozen)

    # ---------------------------------------------------------------- tokens
    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        ids = self.tokenizer(list(texts))  # (b, context_length), padded with 0
        mask = _mask_through_eot(ids)
        length = max(int(mask.sum(1).max()), 1) if len(texts) else 1
        device = self._device()
        return {"input_ids": ids[:, :length].to(device), "attention_mask": mask[:, :length].to(device)}

    def token_counter(self) -> tuple[int, TokenCounter]:
        """``(context_length, count)``: CLIP BPE tokens of each text with ``<start>`` and ``<end>``, untruncated."""
        return self.context_length, partial(clip_bpe_counts, self.tokenizer)

    # --------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        b, length = input_ids.shape
        if length > self.context_length:
            raise ValueError(f"text of {length} tokens exceeds context_length={self.context_length}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length].to(x.dtype))
        x = self.ln_final(x)
        if self.project and self.text_projection is not None:
            proj = self.text_projection
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        mask = attention_mask.bool()
        eot = _eot_positions(input_ids, mask)
        cls = x[torch.arange(b, device=x.device), eot]
        return TextFeatures(tokens=x, cls=cls, mask=mask, input_ids=input_ids)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, out_dim={self.out_dim}, frozen={self.frozen}"


def _mask_through_eot(ids: Tensor) -> Tensor:
    """``True`` at every position up to and including the first EOT (everything if none)."""
    is_eot = ids == EOT_TOKEN_ID
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    first = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(ids[:, 0], ids.shape[1] - 1))
    return pos <= first[:, None]


def _eot_positions(ids: Tensor, mask: Tensor) -> Tensor:
    """Index of the first EOT per row, else the last masked-in position."""
    is_eot = ids == EOT_TOKEN_ID
    last = (mask.long().sum(1) - 1).clamp(min=0)
    return torch.where(is_eot.any(1), is_eot.int().argmax(1), last)
