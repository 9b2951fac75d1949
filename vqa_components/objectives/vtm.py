"""Video-text matching (VTM) pretraining objective (VideoDistill section 3.5, eq. 7; E-ViLM section 3.4, eq. 8)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.interfaces import ModelOutput, Objective, TextFeatures
from vqa_components.layers.matching import MatchingClassifier, head_matching_layer
from vqa_components.objectives._pairs import matched_pairs
from vqa_components.registry import OBJECTIVES


def swap_sources(n: int, swap_prob: float, generator: torch.Generator | None = None) -> list[int]:
    """For each of ``n`` pairs, the pair whose text it takes: itself, or another one after a swap.

    Each pair is chosen independently with probability ``swap_prob``. The chosen
    pairs pass their texts around one random cycle (a derangement), so a chosen
    pair never keeps its own text; a single chosen pair borrows the text of a
    random other pair (which keeps its own).
    """
    source = list(range(n))
    if n >= 2 and swap_prob > 0:
        chosen = torch.nonzero(torch.rand(n, generator=generator) < swap_prob).flatten()
        if len(chosen) == 1:
            i = int(chosen[0])
            j = int(torch.randint(n - 1, (1,), generator=generator))
            source[i] = j + (j >= i)
        elif len(chosen) > 1:
            cycle = chosen[torch.randperm(len(chosen), generator=generator)].tolist()
            for k, i in enumerate(cycle):
                source[i] = cycle[(k + 1) % len(cycle)]
    return source


def swap_annotations(
    texts: Sequence[str], swap_prob: float, generator: torch.Generator | None = None
) -> tuple[list[str], Tensor]:
    """Exchange the texts of randomly chosen pairs (:func:`swap_sources`); return the new texts and
    matched labels. A pair whose new text equals its old one (duplicate captions in the batch) is
    still matched.

    Returns:
        ``(new_texts, labels)``; ``labels`` ``(b,)`` long, 1 = matched, 0 = not matched.
    """
    texts = [str(t) for t in texts]
    new = [texts[j] for j in swap_sources(len(texts), swap_prob, generator)]
    labels = torch.tensor([int(a == o) for a, o in zip(new, texts)], dtype=torch.long)
    return new, labels


def select_text(text: TextFeatures, rows: Tensor) -> TextFeatures:
    """The samples ``rows`` of ``text`` (each of its tensors indexed by row), as new features of batch
    size ``len(rows)``."""
    values = {f.name: getattr(text, f.name) for f in dataclasses.fields(text)}
    return dataclasses.replace(
        text, **{k: v.index_select(0, rows.to(v.device)) for k, v in values.items() if isinstance(v, Tensor)}
    )


@OBJECTIVES.register("vtm")
class VideoTextMatching(Objective):
    """Video-text matching: is this (video, text) pair matched? Two-class CE on the fused pooled vector.

    ::

        L_VTM = -E log p(y | pooled),   p(y | pooled) = softmax(W pooled + b)_y

    where ``y = 1`` for a matched pair and ``0`` for an unmatched one, and ``pooled`` is the
    fusion's ``FusionOutput.pooled``. Two papers use it:

    * **VideoDistill** (section 3.5, eq. 7): ``pooled`` is ``v_cls*``, the language-aware
      video feature that its sampler and fusion distil for the question or caption; "we randomly
      exchange the annotations of two input pairs (matched) in a mini-batch with a probability
      of 0.5".
    * **E-ViLM** (section 3.4, eq. 8: "the model is expected to predict whether the video-text
      pair matches"): ``pooled`` is ``h^CLS`` of the merged decoder (eq. 2); the paper gives no
      rule for the unmatched pairs, so VideoDistill's exchange is used.

    Unmatched pairs are made by exchanging annotations inside the batch
    (:func:`swap_annotations`, probability ``swap_prob`` per pair). Only the changed pairs run
    again, from the text features on: ``model.forward_features`` re-runs sampler, fusion and head
    on the **backbone output already computed** (``out.video``) with the swapped text, so the
    pooled vector is computed for the wrong text. Matched pairs reuse ``out.fused.pooled``. What
    the swapped text is depends on the model's ``masked_pass``
    (:mod:`~vqa_components.objectives.masked_pass`):

    * ``"separate"`` (default; VideoDistill): ``out`` is the default forward on the unmasked
      inputs, and the swapped texts are encoded again (``model.encode_text``).
    * ``"single"`` (E-ViLM's Fig. 3): ``out`` is the one forward on the masked frames and the
      masked words; the swapped pair reads the other row's *masked* text features
      (``out.text``, no encoder runs), so masked and unmasked text never tell matched from
      unmatched pairs.

    Texts come from ``batch[model.text_field]``; in the multiple-choice forward
    the matched pairs are (video, "question correct-option") (see
    :func:`matched_pairs`).

    The two-class layer (:class:`~vqa_components.layers.matching.MatchingClassifier`): with
    ``share_head=True`` and a model head that has one (``vtm_choice``), the head's ``proj`` (so
    pretraining trains the head that later scores options); otherwise this objective's own.

    Exchanges happen in evaluation too, so ``val/vtm_acc`` measures matching.
    Returns ``{"loss", "acc"}`` (``acc``: matching accuracy).

    Args:
        in_dim: width of ``FusionOutput.pooled``.
        weight: scale of this loss in the total.
        swap_prob: probability that a pair's text is exchanged.
        share_head: use the model head's two-class layer when there is one (``vtm_choice``'s ``proj``).
    """

    def __init__(
        self, in_dim: int, weight: float = 1.0, swap_prob: float = 0.5, share_head: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 <= swap_prob <= 1.0:
            raise ValueError(f"vtm: swap_prob must be in [0, 1], got {swap_prob}")
        self.weight = weight
        self.swap_prob = swap_prob
        self.share_head = share_head
        self.proj = MatchingClassifier(in_dim)

    def classifier(self, model: nn.Module) -> nn.Module:
        """The two-class layer in use (the model head's when shared)."""
        shared = head_matching_layer(getattr(model, "head", None)) if self.share_head else None
        return shared if shared is not None else self.proj

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        rows, texts = matched_pairs(model, batch, out)
        if not texts:
            zero = out.fused.pooled.sum() * 0.0
            return {"loss": zero, "acc": zero.detach()}
        pooled = out.fused.pooled[rows]
        source = swap_sources(len(texts), self.swap_prob)
        new_texts = [texts[j] for j in source]
        labels = torch.tensor([int(a == o) for a, o in zip(new_texts, texts)], device=pooled.device)
        changed = torch.tensor([a != o for a, o in zip(new_texts, texts)], dtype=torch.bool)
        if changed.any():
            idx = torch.nonzero(changed).flatten().to(pooled.device)
            video = out.video.select(rows[idx])
            if out.masked is not None:  # masked_pass single: the source rows' masked text, as encoded
                text = select_text(out.text, rows[torch.tensor(source, device=rows.device)[idx]])
            else:
                text = model.encode_text([new_texts[i] for i in idx.tolist()])
            swapped = model.forward_features(video, text)
            pooled = pooled.index_copy(0, idx, swapped.fused.pooled.to(pooled.dtype))
        classifier = self.classifier(model)
        logits = classifier(pooled).float()
        loss = F.cross_entropy(logits, labels)
        if classifier is not self.proj:  # keep the unused own layer in the graph (DDP needs every grad)
            loss = loss + 0.0 * sum(p.sum() for p in self.proj.parameters())
        acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc.detach()}
