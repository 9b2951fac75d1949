"""A T5 decoder that generates the answer (or caption) text from the fused tokens.

::

    FusionOutput.tokens (b, m, in_dim) ──► Linear (if in_dim != d_model) ──► memory (b, m, d_model)
                                                                              │ cross-attention
    <start> y_1 ... y_{l-1} ──► T5 decoder stack (causal self-attention) ◄────┘
                                      └──► LM head ──► logits (b, l, vocab) over y_1 ... y_l <eos>

The co-tokenization paper ends in "a decoder that generates the text output" (the blog);
the recipes build its model on T5, so the decoder is T5's (``transformers``'
``T5ForConditionalGeneration``: ``pretrained_path: t5-base`` in the paper recipes, or built from a
config) with the fused tokens in place of T5's encoder output: no T5 encoder is
built (``num_layers`` of the config counts decoder layers; the encoder stack has none, and its
one leftover final LayerNorm is frozen so that no trainable weight goes without gradient, which
DDP rejects).

* **Training** (``targets`` given): teacher forcing. The targets are tokenized without special
  tokens, cut to ``max_answer_tokens - 1`` tokens and closed with the end token; the decoder reads
  them shifted right behind the start token (T5's convention: the padding id; see Tokenizer). ``logits``
  ``(b, l, vocab)`` score ``target_ids`` (``-100`` at padding), which the ``answer_cross_entropy``
  and ``captioning`` objectives turn into a token-level cross-entropy.
* **Evaluation and prediction**: :meth:`generate`, greedy (``num_beams=1``) or beam search,
  through ``transformers``' ``generate``, at most ``max_answer_tokens`` new tokens; the
  tokenizer decodes the ids without special tokens.
* **What counts as correct**: exact match of the generated text and the batch's ``answer`` after
  :func:`~vqa_components.metrics.exact_match.normalize_answer` (lower case, punctuation as spaces,
  no articles, one space between words); with several annotators' answers (``answers``, iVQA) the
  soft accuracy ``min(#annotators whose normalised answer equals it / 2, 1)``.

Tokenizer: like ``hf_transformer`` the head takes ``tokenizer_path`` (a tokenizer folder, a
WordPiece ``vocab.txt``, T5's ``spiece.model``, or a Hugging Face model id such as ``t5-base`` read
through the hub cache), usually the text encoder's; with ``pretrained_path`` it defaults to that
folder or id (``t5-base``: T5's own SentencePiece vocabulary, end ``</s>`` = 1, padding and start
``<pad>`` = 0). Its end token is ``eos`` or, for BERT-style vocabularies, ``[SEP]``, and the start
token is the padding id (T5's convention). ``tokenizer_path: clip_bpe`` uses CLIP's BPE vocabulary
that ships with ``open_clip`` (the ``small_transformer`` text encoder's): end ``<end_of_text>``,
start ``<start_of_text>``, padding id 0. On the meta device a ``pretrained_path`` gives only its
``config.json`` and tokenizer: the weights are not looked up.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vqa_components.interfaces import FusionOutput, Head, HeadOutput, ModelOutput, TextFeatures
from vqa_components.metrics.exact_match import annotator_matches, exact_match
from vqa_components.metrics.soft_accuracy import annotator_agreement
from vqa_components.registry import HEADS
from vqa_components.tokenizers import ClipBPETokenizer, load_tokenizer_or_clip_bpe, tokenizer_size
from vqa_components.weights import pretrained_model

#: label of positions the loss ignores (PyTorch's and transformers' convention)
IGNORE = -100


@HEADS.register("text_decoder")
class TextDecoderHead(Head):
    """Generates answers with a T5 decoder over the fusion's tokens.

    Args:
        in_dim: width of ``FusionOutput.tokens``.
        config: a ``T5Config`` dict for a random-init build (``d_model``, ``num_layers`` = decoder
            layers, ``num_heads``, ``d_kv``, ``d_ff``, ...); ``vocab_size`` and the special ids
            come from the tokenizer. The LM head shares the input embedding's weight unless
            ``tie_word_embeddings: false`` (then it has its own, and the decoder output is not
            scaled by ``d_model**-0.5``: T5 v1.1).
        tokenizer_path: tokenizer folder, WordPiece ``vocab.txt``, T5's ``spiece.model``, a hub id, or
            ``clip_bpe`` (required with ``config``; default with ``pretrained_path``: that folder or id).
        pretrained_path: a local ``T5ForConditionalGeneration`` folder (``save_pretrained``), or a
            Hugging Face model id (``t5-base``, ``google/t5-v1_1-base``) read by
            ``from_pretrained(id)`` through the hub cache (``HF_HUB_OFFLINE=1``: the cache only;
            missing: one line naming the id, the cache and ``hf download ID``); its decoder, shared
            embeddings and LM head are used, its encoder is dropped.
        max_answer_tokens: most tokens of a target (end token included) and of a generated answer.
        num_beams: beam width of :meth:`generate` (1 = greedy).
        length_penalty: beam search's length penalty (``transformers`` convention).
    """

    fsdp_blocks = ("T5Block",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    task = "generate"

    def __init__(
        self,
        in_dim: int,
        config: dict[str, Any] | None = None,
        tokenizer_path: str | None = None,
        pretrained_path: str | None = None,
        max_answer_tokens: int = 16,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> None:
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        if max_answer_tokens < 2:
            raise ValueError(f"text_decoder: max_answer_tokens must be >= 2 (a token and the end), got {max_answer_tokens}")
        if num_beams < 1:
            raise ValueError(f"text_decoder: num_beams must be >= 1, got {num_beams}")
        if pretrained_path is not None and config is not None:
            raise ValueError("text_decoder: give pretrained_path (its own architecture) or config (a "
                             "random init), not both; on the command line set the other to null")
        if pretrained_path is not None:
            self.t5, self.weights_source, where = pretrained_model(  # on the meta device: its config only
                T5ForConditionalGeneration.from_pretrained, pretrained_path, "text_decoder"
            )
            self.tokenizer = load_tokenizer_or_clip_bpe(tokenizer_path or where, "text_decoder")
            size = tokenizer_size(self.tokenizer)
            if size > self.t5.config.vocab_size:
                raise ValueError(f"text_decoder: the tokenizer has {size} tokens but {pretrained_path}'s "
                                 f"vocab_size is {self.t5.config.vocab_size}")
            self.t5.encoder.block = nn.ModuleList()  # the fused tokens take the encoder's place
        elif config is not None:
            if tokenizer_path is None:
                raise ValueError("text_decoder: a random-init build (config=...) needs tokenizer_path "
                                 "(a tokenizer folder, a WordPiece vocab.txt, or clip_bpe)")
            self.tokenizer = load_tokenizer_or_clip_bpe(tokenizer_path, "text_decoder")
            cfg = dict(config)
            cfg.pop("model_type", None)
            cfg["num_decoder_layers"] = cfg.pop("num_layers", cfg.get("num_decoder_layers", 2))
            cfg.setdefault("vocab_size", tokenizer_size(self.tokenizer))
            if cfg["vocab_size"] < tokenizer_size(self.tokenizer):
                raise ValueError(f"text_decoder: config vocab_size={cfg['vocab_size']} is smaller than the "
                                 f"tokenizer's {tokenizer_size(self.tokenizer)} tokens")
            pad, eos, start = self._special_ids(self.tokenizer)
            self.t5 = T5ForConditionalGeneration(
                T5Config(num_layers=0, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=start, **cfg)
            )
            if cfg.get("tie_word_embeddings") is False:
                self._untie_lm_head()
        else:
            raise ValueError("text_decoder needs config (random init) or pretrained_path (a local T5 folder)")
        self.t5.encoder.requires_grad_(False)  # unused: only its final LayerNorm (and the shared embedding) remain
        self.t5.shared.requires_grad_(True)  # shared with the decoder's input embedding and the LM head, unless untied
        self.pad_id, self.eos_id, self.start_id = self._special_ids(self.tokenizer)
        self.t5.config.decoder_start_token_id = self.start_id
        d_model = int(self.t5.config.d_model)
        self.proj: nn.Module = nn.Identity() if in_dim == d_model else nn.Linear(in_dim, d_model)
        self.max_answer_tokens = max_answer_tokens
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        gen = self.t5.generation_config
        gen.max_length = gen.min_length = None
        gen.pad_token_id, gen.eos_token_id, gen.decoder_start_token_id = self.pad_id, self.eos_id, self.start_id

    def _untie_lm_head(self) -> None:
        """Give the LM head its own weight (``tie_word_embeddings: False``, T5 v1.1's layout).

        ``transformers`` >= 5 ties T5's LM head to the shared embedding whatever the config says
        and reads ``tie_word_embeddings=False`` only as "do not scale the decoder output by
        ``d_model**-0.5``"; older versions untie it themselves. The untied head is initialised as
        T5 initialises one (normal, std ``initializer_factor``).
        """
        head = self.t5.lm_head
        if head.weight is self.t5.shared.weight or head.weight.data_ptr() == self.t5.shared.weight.data_ptr():
            weight = torch.empty_like(self.t5.shared.weight)
            nn.init.normal_(weight, mean=0.0, std=float(self.t5.config.initializer_factor))
            head.weight = nn.Parameter(weight)

    @staticmethod
    def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
        """``(pad, end, start)`` token ids."""
        if isinstance(tokenizer, ClipBPETokenizer):
            return tokenizer.pad_token_id, tokenizer.eot_token_id, tokenizer.sot_token_id
        pad = tokenizer.pad_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if pad is None or eos is None:
            raise ValueError("text_decoder: the tokenizer needs a padding token and an end token (eos or [SEP])")
        return int(pad), int(eos), int(pad)

    def _pieces(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, at most ``max_answer_tokens - 1``."""
        n = self.max_answer_tokens - 1
        if isinstance(self.tokenizer, ClipBPETokenizer):
            return [self.tokenizer._tok.encode(t)[:n] for t in texts]
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=n)["input_ids"]

    def decode(self, ids: Tensor) -> list[str]:
        """Generated ids -> text, special tokens left out."""
        if isinstance(self.tokenizer, ClipBPETokenizer):
            return [self.tokenizer.decode(row) for row in ids.tolist()]
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # ------------------------------------------------------------------ targets
    def target_ids(self, texts: list[str]) -> Tensor:
        """``(b, l)`` token ids of ``texts`` closed with the end token, ``-100`` at padding."""
        pieces = self._pieces(list(texts))
        rows = [list(p) + [self.eos_id] for p in pieces]
        out = torch.full((len(rows), max(len(r) for r in rows)), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out.to(self.t5.shared.weight.device)

    def _memory(self, fused: FusionOutput) -> tuple[Tensor, Tensor]:
        memory = self.proj(fused.tokens)
        mask = fused.mask if fused.mask is not None else torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        return memory, mask.long()

    # ------------------------------------------------------------------ forward
    def forward(self, fused: FusionOutput, text: TextFeatures, targets: list[str] | None = None) -> HeadOutput:
        memory, mask = self._memory(fused)
        if targets is None:  # one step from the start token: the cost of a generated token (profiling)
            start = torch.full((memory.shape[0], 1), self.start_id, dtype=torch.long, device=memory.device)
            logits = self.t5(encoder_outputs=(memory,), attention_mask=mask, decoder_input_ids=start).logits
            return HeadOutput(logits=logits)
        labels = self.target_ids(targets)
        # the start token, then the targets (-100 -> padding): the public form of T5's shift right
        decoder_input = self.t5.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.t5(encoder_outputs=(memory,), attention_mask=mask, decoder_input_ids=decoder_input).logits
        return HeadOutput(logits=logits, target_ids=labels)

    @torch.no_grad()
    def generate(self, fused: FusionOutput, num_beams: int | None = None) -> list[str]:
        """The decoded text for each sample (greedy, or beam search with ``num_beams`` > 1)."""
        from transformers.modeling_outputs import BaseModelOutput

        memory, mask = self._memory(fused)
        ids = self.t5.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=mask,
            max_new_tokens=self.max_answer_tokens,
            num_beams=num_beams or self.num_beams,
            length_penalty=self.length_penalty,
            do_sample=False,
        )
        return self.decode(ids)  # clip_bpe has no batch_decode

    # --------------------------------------------------------------- evaluation
    def answers(self, out: ModelOutput) -> list[str]:
        return self.generate(out.fused)

    def has_ground_truth(self, batch: dict[str, Any]) -> bool:
        return "answer" in batch

    def score(self, answers: Tensor | list[str], batch: dict[str, Any]) -> Tensor:
        """1.0 where the normalised generated text equals the normalised ``answer``; with ``answers``
        (several annotators' answers per question) ``min(#annotators whose normalised answer equals
        it / 2, 1)``."""
        device = self.t5.shared.weight.device
        if batch.get("answers") is not None:
            return annotator_agreement(annotator_matches(list(answers), batch["answers"]).to(device))
        return exact_match(list(answers), list(batch["answer"]), device=device)

    def extra_repr(self) -> str:
        c = self.t5.config
        return f"d_model={c.d_model}, decoder_layers={c.num_decoder_layers}, vocab={c.vocab_size}, num_beams={self.num_beams}"
