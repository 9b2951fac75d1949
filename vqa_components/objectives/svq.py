"""Semantic vector-quantized tokenizer training, E-ViLM's first stage (Fang et al., section 3.3, eqs. 4-7)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, ModelOutput, Objective
from vqa_components.layers.pixels import one_stream_pixels, pixels_to_float
from vqa_components.layers.semantic_tokenizer import SemanticVideoTokenizer, TaggerConfig
from vqa_components.registry import OBJECTIVES

WORD_LOSSES = ("focal", "bce")
WORD_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in WORD_REDUCTIONS:
        raise ConfigError(
            f"svq: unknown word_reduction {reduction!r}; choose one of {', '.join(WORD_REDUCTIONS)}"
        )
    return reduction


def _reduce_words(per_word: Tensor, reduction: str) -> Tensor:
    """``(b, K)`` per-word losses -> the mean over the batch of their mean (eq. 6) or sum over the words."""
    _check_reduction(reduction)
    return (per_word.sum(-1) if reduction == "sum" else per_word.mean(-1)).mean()


def focal_word_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """E-ViLM's eq. 6, the loss of each sample averaged over the ``K`` words, then over the batch.

    ::

        L_TOKEN = -1/K sum_k [ y_k log(p_k) + (1 - y_k) p_k log(1 - p_k) ],   p = sigmoid(logits)   (eq. 6)

    Eq. 6 is printed without the leading minus (as written it is a log-likelihood, to be
    maximised); the loss is its negative. The negatives' factor ``p_k`` is not detached. It is
    the asymmetric loss the paper cites ([7], Ben-Baruch et al.) with ``gamma+ = 0``,
    ``gamma- = 1`` and no probability margin: easy negatives (``p_k`` near 0) barely count,
    which keeps the many absent words from drowning the few present ones.

    Args:
        logits: ``(b, K)`` word scores.
        targets: ``(b, K)`` multi-hot, 1 at the words of the caption.
        reduction: ``"mean"`` over the words (eq. 6 as printed) or ``"sum"`` (``K`` times it: the
            cited asymmetric-loss code sums over the classes); then the mean over the batch.
    """
    logits = logits.float()
    y = targets.to(logits.dtype)
    positive = F.logsigmoid(logits)
    negative = torch.sigmoid(logits) * F.logsigmoid(-logits)
    return _reduce_words(-(y * positive + (1 - y) * negative), reduction)


def bce_word_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of each word, averaged (or summed: ``reduction``) over the words, then averaged
    over the batch (E-ViLM Table 6's ``L_BCE`` tokenizer)."""
    per_word = F.binary_cross_entropy_with_logits(logits.float(), targets.to(torch.float32), reduction="none")
    return _reduce_words(per_word, reduction)


def continuation_ids(encoder: nn.Module) -> frozenset[int]:
    """Ids of the encoder's WordPiece continuation pieces (``##...``), from its ``vocab`` list or its
    tokenizer's ``convert_ids_to_tokens``; empty for a vocabulary without them."""
    vocab = getattr(encoder, "vocab", None)
    tokenizer = getattr(encoder, "tokenizer", None)
    if vocab is None and hasattr(tokenizer, "convert_ids_to_tokens"):
        vocab = tokenizer.convert_ids_to_tokens(list(range(int(encoder.vocab_size))))
    return frozenset(i for i, piece in enumerate(vocab or []) if isinstance(piece, str) and piece.startswith("##"))


def multi_hot(input_ids: Tensor, attention_mask: Tensor, vocab_size: int, ignore: Iterable[int]) -> Tensor:
    """``(b, K)`` float, 1 at every id that occurs among a sample's real tokens, except ``ignore`` ids.

    Args:
        input_ids: ``(b, l)`` token ids.
        attention_mask: ``(b, l)`` truthy at real tokens (padding is left out).
        vocab_size: ``K``.
        ignore: ids that are not words (start, end, padding, mask, ...).
    """
    drop = torch.tensor(sorted({int(i) for i in ignore}), dtype=input_ids.dtype, device=input_ids.device)
    keep = attention_mask.bool() & ~torch.isin(input_ids, drop)
    target = torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device)
    rows, cols = keep.nonzero(as_tuple=True)
    target[rows, input_ids[rows, cols]] = 1.0
    return target


@OBJECTIVES.register("svq")
class SemanticVQ(Objective):
    """E-ViLM stage 1: train the semantic video tokenizer to name the caption's words through its codes.

    ::

        L_SVQ = L_TOKEN + ||sg[E(X)] - C_q||² + beta ||E(X) - sg[C_q]||²                 (eq. 7, beta = 1)
        L_TOKEN = focal word loss of eq. 6 on y^S = sigmoid(HEAD^S(mean D(C_q)))         (eqs. 5, 6)

    The objective owns the :class:`~vqa_components.layers.semantic_tokenizer.SemanticVideoTokenizer`
    (``tokenizer``; its ``tokenizer.tagger`` is what stage 2's ``mvm`` keeps) and runs no model
    forward (``runs_model_forward = False``). Per batch it reads ``batch["video"]`` (``uint8`` or
    floats in ``[0, 1]``, ``(b, t, 3, H, W)``) and the captions ``batch[caption_field]``, tokenized
    with ``model.text_encoder.tokenize``: the text encoder is only used for its tokenizer and
    vocabulary here. The target ``y^S`` is multi-hot over the vocabulary: 1 at every id among a
    caption's real tokens except the encoder's ``special_token_ids``, ``pad_token_id`` and
    ``mask_token_id``, and except WordPiece continuation pieces (``##ing``): the paper's targets are
    caption *words*, so a word split into pieces counts by its first piece (``play`` of ``playing``)
    and its endings are no classes of their own (:func:`continuation_ids`).

    Choices the paper leaves open: word classes are the text encoder's token ids (E-ViLM's BERT
    keeps only frequent words; a BPE vocabulary gives sub-word pieces); a word that occurs twice
    counts once; ``word_loss`` ``"bce"`` is Table 6's ablation (binary cross-entropy averaged the
    same way).

    **The word term's size** (options, not in the paper)::

        L_SVQ = word_weight * R_k(l_k) + ||sg[E(X)] - C_q||² + beta ||E(X) - sg[C_q]||²
        R = mean over the K words (word_reduction: mean, eq. 6 as printed) or their sum (sum)

    Eq. 6 averages over the ``K`` words, while the asymmetric-loss code it cites ([7]) sums over
    the classes: with the mean, the word term's gradient at the encoder's output is a few percent
    of the quantizer terms' at initialisation (1.5% for ``recipes/evilm/tiny/tokenizer.yaml``, K =
    120; issue 21 measured 1.6% at the paper's K = 9,157), so the tagger's encoder learns almost
    only to commit to its codes. ``word_reduction: sum`` multiplies the word term by ``K``;
    ``word_weight`` scales it by any factor. The defaults are eq. 7 as printed.

    **Gradient norms** (``log_grad_norms``, on by default): on each step that Lightning logs
    (``(trainer.global_step + 1) % trainer.log_every_n_steps == 0``; outside a Trainer, every
    training call) the objective also returns ``grad_word`` and ``grad_quantizer``, the l2 norms
    over the batch of ``d(word_weight * R(l))/dE(X)`` and ``d(L_codebook + beta L_commit)/dE(X)``,
    where ``E(X)`` is the encoder's output ``(b, t, gh, gw, D)`` before the quantizer normalises it
    (logged as ``train/svq_grad_word``, ``train/svq_grad_quantizer``). They come from
    ``torch.autograd.grad(term, E(X), retain_graph=True)``, which writes no parameter's ``.grad``:
    the step's backward and the optimiser see nothing of them. The cost is one more backward
    through the decoder and word head (the encoder's ViT is not reached) on the logged steps only,
    and none while evaluating.

    Returns ``{"loss", "token_loss", "codebook_loss", "commitment_loss", "utilisation",
    "perplexity"}`` and, on logged steps, ``"grad_word"`` and ``"grad_quantizer"``. ``token_loss``
    is eq. 6's ``L_TOKEN`` (the mean over the words, without ``word_weight``) whatever the options,
    so that runs with different options compare, also with the best constant guess; ``loss`` holds
    the weighted, reduced term. (utilisation: percent of the codebook used in the batch.)

    Args:
        vocab_size: ``K``; ``None`` (the usual) takes ``model.text_encoder.vocab_size`` when the
            model attaches the objective; given, it must equal it (and lets the objective run
            without a model through :meth:`loss_from_targets`).
        word_loss: ``"focal"`` (eq. 6) or ``"bce"``.
        word_reduction: ``"mean"`` over the ``K`` words (eq. 6 as printed) or ``"sum"``.
        word_weight: factor of the word term in ``L_SVQ`` (eq. 7: 1).
        log_grad_norms: return ``grad_word`` and ``grad_quantizer`` on logged training steps.
        caption_field: the batch key of the captions.
        weight: scale of this loss in the total.
        tagger: the encoder and quantizer
            (:class:`~vqa_components.layers.semantic_tokenizer.TaggerConfig`, or a mapping of its
            fields: ``num_codes``, ``code_dim``, ``img_size``, ``patch_size``, ``embed_dim``,
            ``depth``, ``num_heads``, ``mlp_ratio``, ``beta``, ``restart_every``, ``model_name``,
            ``pretrained``; ``None``: the paper's, 9,420 codes of 32, a random ViT-B/32); stage 2's
            ``mvm`` takes the same ``tagger`` block. ``model_name`` with ``pretrained: true`` starts
            the encoder's ViT from a timm ViT's pretrained weights (the paper recipes: OpenAI CLIP's
            ViT-B/32, ``vit_base_patch32_clip_quickgelu_224.openai``), read through the Hugging Face
            hub cache; the encoder records ``weights_source``.
        decoder_dim, decoder_depth, decoder_heads: the tokenizer's decoder (paper: 8 blocks).
    """

    runs_model_forward = False

    def __init__(
        self,
        vocab_size: int | None = None,
        *,
        word_loss: str = "focal",
        word_reduction: str = "mean",
        word_weight: float = 1.0,
        log_grad_norms: bool = True,
        caption_field: str = "caption",
        weight: float = 1.0,
        tagger: TaggerConfig | None = None,
        decoder_dim: int = 384,
        decoder_depth: int = 8,
        decoder_heads: int = 6,
    ) -> None:
        super().__init__()
        if word_loss not in WORD_LOSSES:
            raise ConfigError(f"svq: unknown word_loss {word_loss!r}; choose one of {', '.join(WORD_LOSSES)}")
        self.word_loss = word_loss
        self.word_reduction = _check_reduction(word_reduction)
        self.word_weight = word_weight
        self.log_grad_norms = log_grad_norms
        self.caption_field = caption_field
        self.weight = weight
        self.tokenizer = SemanticVideoTokenizer(
            tagger,
            vocab_size=vocab_size,
            decoder_dim=decoder_dim,
            decoder_depth=decoder_depth,
            decoder_heads=decoder_heads,
        )

    def attach(self, model: nn.Module) -> None:
        vocab = _text_encoder(model).vocab_size
        given = self.tokenizer.vocab_size
        if given is not None and given != vocab:
            raise ConfigError(
                f"svq: vocab_size={given} but the text encoder has vocab_size={vocab}; drop vocab_size "
                f"(it is taken from the text encoder)"
            )
        self.tokenizer.build_word_head(vocab)

    def targets(self, model: nn.Module, captions: list[str]) -> Tensor:
        """``(b, K)`` multi-hot word targets of ``captions`` (see the class docstring)."""
        enc = _text_encoder(model)
        tok = enc.tokenize(list(captions))
        cached = self.__dict__.get("_continuations")  # (encoder, ids): read once per text encoder
        if cached is None or cached[0] is not enc:
            cached = self.__dict__["_continuations"] = (enc, continuation_ids(enc))
        ignore = set(enc.special_token_ids) | {enc.pad_token_id} | cached[1]
        if getattr(enc, "mask_token_id", None) is not None:
            ignore.add(enc.mask_token_id)
        return multi_hot(tok["input_ids"], tok["attention_mask"], enc.vocab_size, ignore)

    def loss_from_targets(
        self, video: Tensor, targets: Tensor, grad_norms: bool = False
    ) -> dict[str, Tensor]:
        """Eq. 7 for float pixels ``video (b, t, 3, H, W)`` and multi-hot ``targets (b, K)``; with
        ``grad_norms``, also each term's gradient norm at the encoder's output (see the class docstring)."""
        out = self.tokenizer(pixels_to_float(video))
        if out.logits.shape[-1] != targets.shape[-1]:
            raise ConfigError(
                f"svq: {targets.shape[-1]} word targets but the word head has {out.logits.shape[-1]} classes"
            )
        word_loss = focal_word_loss if self.word_loss == "focal" else bce_word_loss
        reduced = word_loss(out.logits, targets.to(out.logits.device), self.word_reduction)
        token = reduced.detach() / targets.shape[-1] if self.word_reduction == "sum" else reduced.detach()
        word = self.word_weight * reduced
        vq = out.vq
        quantizer = self.tokenizer.tagger.quantizer.loss(vq)
        terms = {
            "loss": word + quantizer,
            "token_loss": token,
            "codebook_loss": vq.codebook_loss.detach(),
            "commitment_loss": vq.commitment_loss.detach(),
            "utilisation": vq.utilisation,
            "perplexity": vq.perplexity,
        }
        if grad_norms and out.encoded is not None and out.encoded.requires_grad:
            terms["grad_word"] = _grad_norm(word, out.encoded)
            terms["grad_quantizer"] = _grad_norm(quantizer, out.encoded)
        return terms

    def forward(
        self, model: nn.Module, batch: dict[str, Any], out: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        video = one_stream_pixels(batch["video"], "svq: the tokenizer")
        if self.caption_field not in batch:
            raise ConfigError(
                f"svq: the batch has no {self.caption_field!r} (the captions whose words are the targets)"
            )
        grad_norms = (
            self.log_grad_norms and self.training and torch.is_grad_enabled() and _logs_this_step(model)
        )
        return self.loss_from_targets(video, self.targets(model, list(batch[self.caption_field])), grad_norms)


def _grad_norm(term: Tensor, at: Tensor) -> Tensor:
    """``||d term / d at||``, detached; no parameter's ``.grad`` changes and the graph is kept."""
    (grad,) = torch.autograd.grad(term, at, retain_graph=True, allow_unused=True)
    return torch.zeros((), device=at.device) if grad is None else grad.detach().float().norm()


def _logs_this_step(model: nn.Module) -> bool:
    """Whether Lightning logs this training step (``log_every_n_steps``); outside a Trainer, always."""
    trainer = getattr(model, "_trainer", None)
    if trainer is None:
        return True
    every = int(trainer.log_every_n_steps or 0)
    return every > 0 and (int(trainer.global_step) + 1) % every == 0


def _text_encoder(model: nn.Module) -> nn.Module:
    enc = getattr(model, "text_encoder", None)
    if enc is None:
        raise ConfigError(
            "svq: the model needs a text_encoder: its tokenizer and vocabulary give the word targets"
        )
    return enc
