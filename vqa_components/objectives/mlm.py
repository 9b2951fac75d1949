"""Masked language modelling through the merged decoder (E-ViLM section 3.4, BERT's MLM)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, FusionOutput, ModelOutput, Objective
from vqa_components.objectives._pairs import matched_pairs
from vqa_components.objectives.masked_pass import MaskedText
from vqa_components.objectives.vg_mlm import IGNORE, mask_texts
from vqa_components.registry import OBJECTIVES


class MLMPredictionHead(nn.Module):
    """BERT's prediction head ``decoder(LayerNorm(GELU(dense(h))))``: ``(.., in_dim) -> (.., vocab_size)``."""

    def __init__(
        self, in_dim: int, vocab_size: int, hidden_dim: int | None = None, eps: float = 1e-12
    ) -> None:
        super().__init__()
        hidden = in_dim if hidden_dim is None else hidden_dim
        self.dense = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(h))))


def text_tokens(fused: FusionOutput, model: nn.Module) -> Tensor:
    """``fused.extras["text_tokens"]`` ``(b, l, d)``, or :class:`ConfigError` naming the model's fusion."""
    words = fused.extras.get("text_tokens") if fused.extras else None
    if words is None:
        raise ConfigError(
            f"mlm: fusion {type(model.fusion).__name__} gives no extras['text_tokens'] (its output at each "
            f"text token), which masked language modelling predicts from; use fusion merged_transformer"
        )
    return words


@OBJECTIVES.register("mlm")
class MaskedLanguageModelling(Objective):
    """Masked language modelling (BERT's) through the merged decoder: L_MLM of E-ViLM (eq. 8).

    ::

        w~ = bert_mask(w)                          15% of the real, non-special tokens chosen;
                                                   of those 80% [MASK], 10% random word, 10% kept
        h^L = DEC_VL(out.video, ENC_L(w~)).extras["text_tokens"]          (b, l, d)
        L_MLM = -(1/|M|) sum_{i in M} log softmax(HEAD(h^L_i))[w_i]       M: the chosen positions
        HEAD(h) = W_dec LayerNorm(GELU(W h + b)) + b_dec                  (BERT's prediction head)

    Which pass reads the masked text is the model's ``masked_pass``
    (:mod:`~vqa_components.objectives.masked_pass`). ``"single"`` (E-ViLM's Fig. 3, the E-ViLM
    pretraining recipes): the model masks ``batch[model.text_field]`` with :meth:`mask_text` and runs
    its one forward on it and on the *masked* frames (when ``mvm`` masks them); this objective reads
    ``h^L`` of that forward from ``out``. ``"separate"``: the texts of the matched pairs
    (``batch[model.text_field]``, or each question's correct "question option" pair in the
    multiple-choice forward; see ``matched_pairs``) are tokenized again
    (``model.text_encoder.tokenize``), masked with :func:`~vqa_components.objectives.vg_mlm.bert_mask`,
    encoded (``model.text_encoder(masked_ids, attention_mask)``) and fused with the video
    features of the default forward, the *unmasked* frames' (``model.fuse(out.video, masked_text)``:
    the backbone does not run again; a sampler, if any, runs on the masked text). Either way
    gradients reach the head, the fusion, the text encoder and, through ``out.video``, the backbone.

    The fusion must say where its output tokens of the text are (``FusionOutput.extras
    ["text_tokens"]``, ``(b, l, d)``, as ``fusion: merged_transformer`` does); another fusion
    raises :class:`ConfigError`.

    Choices the paper leaves open (it says only "we randomly mask 15% of the words"):

    * BERT's rule: at least one chosen token per sentence with a candidate; the pad, start,
      end and mask tokens (``special_token_ids``, ``pad_token_id``) are never chosen nor drawn
      as random replacements; the masked tokens are BPE/WordPiece tokens, not whole words.
    * BERT's head with ``hidden_dim = in_dim``, LayerNorm ``eps = 1e-12``. Its decoder weight is
      **not tied** to the word embeddings: those live in the text encoder at the encoder's width
      (128 in the paper, 384 in the decoder) and the text-encoder interface does not expose them.
    * The loss is the mean over the masked tokens of the batch (as BERT), in float32.

    The head is built in :meth:`attach` from ``model.fusion.out_dim`` and
    ``model.text_encoder.vocab_size``, or at construction when both ``in_dim`` and
    ``vocab_size`` are given (then :meth:`attach` checks them against the model).

    Returns ``{"loss", "acc"}`` (``acc``: masked-token accuracy).

    Args:
        in_dim: width of ``extras["text_tokens"]`` (default: the fusion's ``out_dim``).
        vocab_size: the text encoder's vocabulary size (default: ``model.text_encoder.vocab_size``).
        hidden_dim: width of the head's dense layer (default ``in_dim``).
        mask_prob: the chosen fraction of tokens (paper: 0.15).
        weight: scale of this loss in the total.
    """

    #: it reads the fusion's token outputs (a head that skips the fusion leaves it trainable for this)
    reads_fused_tokens = True

    def __init__(
        self,
        in_dim: int | None = None,
        vocab_size: int | None = None,
        hidden_dim: int | None = None,
        mask_prob: float = 0.15,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prob <= 1.0:
            raise ConfigError(f"mlm: mask_prob must be in (0, 1], got {mask_prob}")
        self.weight = weight
        self.mask_prob = mask_prob
        self.in_dim = in_dim
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.head: MLMPredictionHead | None = None
        if in_dim is not None and vocab_size is not None:
            self.head = MLMPredictionHead(int(in_dim), int(vocab_size), hidden_dim)

    def attach(self, model: nn.Module) -> None:
        """Build the prediction head from the model's fusion width and vocabulary (once)."""
        width = getattr(model.fusion, "out_dim", None)
        vocab = getattr(model.text_encoder, "vocab_size", None)
        if vocab is None:
            name = type(model.text_encoder).__name__
            raise ConfigError(f"mlm: text encoder {name} has no vocab_size to predict")
        for name, given, found, source in (
            ("in_dim", self.in_dim, width, "the fusion's out_dim"),
            ("vocab_size", self.vocab_size, vocab, "the text encoder's vocab_size"),
        ):
            if given is not None and found is not None and int(given) != int(found):
                raise ConfigError(
                    f"mlm: {name}={given} but {source} is {found}; leave {name} out or set it to {found}"
                )
        in_dim = self.in_dim if width is None else width
        if in_dim is None:
            name = type(model.fusion).__name__
            raise ConfigError(f"mlm: fusion {name} has no out_dim; give the objective in_dim")
        self.in_dim, self.vocab_size = int(in_dim), int(vocab)
        if self.head is None:
            self.head = MLMPredictionHead(self.in_dim, self.vocab_size, self.hidden_dim)
            device = next((p.device for p in model.fusion.parameters()), None)
            if device is not None:
                self.head.to(device)

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        if self.head is None:
            raise ConfigError(
                "mlm: the prediction head is not built: the model calls attach(model) when it is assembled, "
                "or give the objective in_dim and vocab_size"
            )
        enc = model.text_encoder
        if enc.vocab_size != self.vocab_size:
            raise ConfigError(
                f"mlm: vocab_size={self.vocab_size} but the text encoder {type(enc).__name__} has "
                f"vocab_size={enc.vocab_size}; leave vocab_size out or set it to {enc.vocab_size}"
            )
        # nothing to predict still touches the head: under DDP every rank must give it a gradient
        zero = out.fused.pooled.sum() * 0.0 + sum(p.sum() for p in self.head.parameters()) * 0.0
        shared, fused = out.masked, None
        if shared is not None and shared.text is not None:  # masked_pass single: the model's pass is ours
            masked, fused = shared.text, out.fused
        else:
            rows, texts = matched_pairs(model, batch, out)
            masked = self.mask_text(model, texts) if texts else None
        if masked is None or not (masked.labels != IGNORE).any():  # no text, or no word to mask
            return {"loss": zero, "acc": zero.detach()}
        if fused is None:
            video = out.video
            every_row = torch.arange(video.batch_size, device=rows.device)
            if rows.shape != every_row.shape or not torch.equal(rows, every_row):
                video = video.select(rows)  # multiple choice: some rows
            _, fused = model.fuse(video, enc(masked.input_ids, masked.attention_mask))
        labels = masked.labels
        where = labels != IGNORE
        words = text_tokens(fused, model)
        if words.shape[:2] != labels.shape or words.shape[-1] != self.in_dim:
            raise ConfigError(
                f"mlm: extras['text_tokens'] has shape {tuple(words.shape)}, expected "
                f"({labels.shape[0]}, {labels.shape[1]}, {self.in_dim}) (the masked text's tokens, in_dim "
                f"wide)"
            )
        logits = self.head(words[where]).float()
        target = labels[where]
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc.detach()}

    def mask_text(self, model: nn.Module, texts: list[str]) -> MaskedText:
        """``texts`` tokenized by the model's text encoder and masked by BERT's rule (``mask_prob``)."""
        tok, masked, labels = mask_texts(model.text_encoder, texts, self.mask_prob)
        return MaskedText(input_ids=masked, attention_mask=tok["attention_mask"], labels=labels)
