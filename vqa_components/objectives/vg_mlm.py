"""Vision-guided masked language modelling (VG-MLM, VideoDistill section 3.5, eq. 9)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ModelOutput, Objective
from vqa_components.objectives._pairs import matched_pairs
from vqa_components.registry import OBJECTIVES

IGNORE = -100


def bert_mask(
    input_ids: Tensor,
    attention_mask: Tensor,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking rule.

    Every real (``attention_mask``), non-special token is chosen independently
    with probability ``prob``; a sequence with candidates but no chosen token gets
    one chosen at random (so every such sequence has a target). Of the chosen
    tokens, 80% become ``mask_token_id``, 10% a uniformly random non-special
    token, 10% stay unchanged.

    Args:
        input_ids: ``(b, l)`` token ids.
        attention_mask: ``(b, l)`` truthy at real tokens.
        mask_token_id: the ``[MASK]`` id.
        vocab_size: ids are ``0 .. vocab_size - 1``.
        special_ids: ids never chosen nor drawn as random replacements
            (pad, start, end, mask, ...).
        prob: the chosen fraction.
        generator: random source (on ``input_ids``' device).

    Returns:
        ``(masked_ids, labels)``: the corrupted ids, and the original ids at
        chosen positions with ``-100`` elsewhere.
    """
    device = input_ids.device
    special = torch.tensor(sorted({int(i) for i in special_ids} | {int(mask_token_id)}), device=device)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special)
    chosen = candidates & (torch.rand(input_ids.shape, generator=generator, device=device) < prob)
    # at least one chosen token in every sequence that has a candidate
    empty = candidates.any(-1) & ~chosen.any(-1)
    if empty.any():
        noise = torch.rand(input_ids.shape, generator=generator, device=device).masked_fill(~candidates, -1.0)
        pick = torch.zeros_like(chosen).scatter_(1, noise.argmax(-1, keepdim=True), True)
        chosen = chosen | (pick & empty[:, None])
    labels = input_ids.masked_fill(~chosen, IGNORE)
    u = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (u < 0.8)
    to_random = chosen & (u >= 0.8) & (u < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[special[special < vocab_size]] = False
    allowed_ids = torch.nonzero(allowed).flatten()
    random_ids = allowed_ids[
        torch.randint(len(allowed_ids), input_ids.shape, generator=generator, device=device)
    ]
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def mask_texts(encoder: Any, texts: list[str], prob: float) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """``texts`` tokenized by ``encoder`` and masked by :func:`bert_mask` (its special and padding ids
    never chosen): ``(tokens, masked_ids, labels)``."""
    tok = encoder.tokenize(texts)
    special = set(encoder.special_token_ids) | {encoder.pad_token_id}
    masked, labels = bert_mask(
        tok["input_ids"], tok["attention_mask"], encoder.mask_token_id, encoder.vocab_size, special, prob
    )
    return tok, masked, labels


@OBJECTIVES.register("vg_mlm")
class VisionGuidedMLM(Objective):
    """Predict masked words from their stop-gradient token feature and the video feature ``v_cls*`` (eq. 9).

    ::

        L_VG-MLM = -E log p(w_i | SG(w_i^M), v_cls*)
        p(. | w^M, v) = softmax(MLP([SG(w^M); v]))      MLP: Linear -> GELU -> LayerNorm -> Linear(vocab)

    Applied to the matched pairs of the default (un-swapped) forward: ``v_cls*``
    is ``out.fused.pooled``, computed with the *unmasked* text's features, as the
    paper does (the sampler and fusion saw ``t_cls`` of the unmasked annotation).
    The same texts are tokenized (``model.text_encoder.tokenize``), masked with
    :func:`bert_mask` and encoded again (``model.text_encoder(input_ids,
    attention_mask)``); ``w^M`` are the token features at the masked positions.
    The stop-gradient ``SG(w^M)`` means no gradient reaches the text encoder
    through this pass (it runs under ``torch.no_grad``); the loss trains the MLP
    and, through ``v_cls*``, the fusion, sampler and everything below them.

    Choices where the paper is silent: ``vocab_size`` is an explicit argument (the
    text encoder's ``vocab_size``, 49409 for CLIP's BPE with the appended mask
    token) so the output layer exists before the optimizer is built; it is
    checked against ``model.text_encoder.vocab_size`` on every call. The MLP's
    hidden width defaults to ``text_dim``; it has a LayerNorm after the GELU as in
    BERT's prediction head. Masking draws each candidate with probability
    ``mask_prob`` (at least one per sentence) and replaces 80/10/10 as BERT.

    Returns ``{"loss", "acc"}`` (``acc``: masked-token accuracy).

    Args:
        video_dim: width of ``v_cls*`` (``FusionOutput.pooled``).
        text_dim: width of the text encoder's token features.
        vocab_size: the text encoder's vocabulary size (output classes).
        hidden_dim: the MLP's hidden width (default ``text_dim``).
        mask_prob: the chosen fraction of tokens.
        weight: scale of this loss in the total.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        vocab_size: int,
        hidden_dim: int | None = None,
        mask_prob: float = 0.15,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if vocab_size is None or int(vocab_size) <= 0:
            raise ValueError(
                "vg_mlm: vocab_size is required: the text encoder's vocab_size "
                "(49409 for CLIP's BPE tokenizer with its appended mask token)"
            )
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"vg_mlm: mask_prob must be in (0, 1], got {mask_prob}")
        self.weight = weight
        self.vocab_size = int(vocab_size)
        self.mask_prob = mask_prob
        hidden = text_dim if hidden_dim is None else hidden_dim
        self.mlp = nn.Sequential(
            nn.Linear(text_dim + video_dim, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, self.vocab_size),
        )

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        enc = model.text_encoder
        if enc.vocab_size != self.vocab_size:
            raise ValueError(
                f"vg_mlm: vocab_size={self.vocab_size} but the text encoder "
                f"{type(enc).__name__} has vocab_size={enc.vocab_size}; set the objective's vocab_size to it"
            )
        rows, texts = matched_pairs(model, batch, out)
        zero = out.fused.pooled.sum() * 0.0
        if not texts:
            return {"loss": zero, "acc": zero.detach()}
        tok, masked, labels = mask_texts(enc, texts, self.mask_prob)
        where = labels != IGNORE
        if not where.any():
            return {"loss": zero, "acc": zero.detach()}
        with torch.no_grad():  # SG(w^M): no gradient into the text encoder through the masked pass
            words = enc(masked, tok["attention_mask"]).tokens[where]
        sample = where.nonzero()[:, 0]
        video = out.fused.pooled[rows][sample]
        logits = self.mlp(torch.cat([words.detach().to(video.dtype), video], dim=-1)).float()
        target = labels[where]
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "acc": acc.detach()}
