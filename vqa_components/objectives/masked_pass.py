"""One forward on the masked inputs, read by every objective of the step: E-ViLM's Fig. 3 (``masked_pass: single``).

E-ViLM draws one pass (Fig. 3): "the EdgeNext [53] as the video backbone that encodes the masked video
frames as video embedding", the language encoder encodes the text whose words MLM masks ("a certain
ratio of the textual words are masked and the model predicts their label", section 3.4), and the
decoder's one output ``[h^CLS, h^L, h^V]`` (eq. 2) feeds the three heads: MVM predicts from ``h^V``
(eq. 3 names it), MLM from ``h^L`` and VTM from ``h^CLS``::

    batch["video"] ──── mvm.mask_video ──► masked pixels ─► backbone ──────┐   once
    batch[text_field] ─ mlm.mask_text ──► masked ids ───► text encoder ────┤   once
                                                                           ▼
                                   fuse + head ─► ModelOutput(masked=MaskedInputs)
                                   [h^CLS, h^L, h^V]
                                      │      │     └─► mvm: HEAD^V at the masked cells (eq. 3)
                                      │      └─► mlm: BERT's head at the masked words
                                      └─► vtm: the matched pairs; an unmatched pair re-fuses a row's
                                          masked video with another row's masked text (no encoder runs)

**What VTM reads.** The paper draws one video embedding, the masked frames' ("encodes the masked
video frames as video embedding"), and one decoder output whose ``h^CLS`` VTM reads (eq. 2, "a
special classification token [CLS] (as shown in Figure 3)"); it names no second, unmasked pass. So
in this form VTM reads the same pass: masked frames and masked words. Its unmatched pairs pair a
row's masked video with another row's *masked* text (the text encoder's output of that row, reused),
so that the masking cannot tell matched from unmatched pairs.

``masked_pass: separate`` is what the library did before (and still does by default): the model's
default forward on the unmasked inputs, which VTM reads; MLM re-encodes the masked text and fuses it
with the unmasked video's features; MVM runs the masked pixels through the backbone again and fuses
them with the unmasked text. Two backbone passes and four text-encoder and decoder passes a step
(the fourth for VTM's swapped pairs), against one backbone and one text-encoder pass and two
decoder passes (the second for the swapped pairs) here; and MLM sees the whole video, MVM the whole
text, which makes both easier.

Why the switch is the model's (``VideoQAModel(masked_pass=...)``, kept by its
:class:`~vqa_components.objectives.collection.ObjectiveDict`) and not an objective's argument: the
pass it replaces is the model's default forward, which no objective owns, and the pass is shared by
several objectives: one flag per objective would allow half-shared sets that are neither form.

The objectives that mask say so by a method: ``mask_video(model, batch) -> MaskedVideo`` (``mvm``)
and ``mask_text(model, texts) -> MaskedText`` (``mlm``); at most one of each. They read the shared
pass from ``out.masked`` and run their own pass when it is ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, ModelOutput

#: the choices of ``VideoQAModel(masked_pass=...)``
MASKED_PASSES = ("separate", "single")


@dataclass
class MaskedVideo:
    """The masked frames of a step and what MVM scores them against.

    Attributes:
        pixels: ``(b, t, 3, H, W)`` floats in ``[0, 1]``, the masked cells' pixels at 0.
        mask: ``(b, t, gh, gw)`` bool, True at the masked cells.
        targets: ``(b, t, gh, gw)`` long, the frozen tagger's codes of the *unmasked* frames.
    """

    pixels: Tensor
    mask: Tensor
    targets: Tensor


@dataclass
class MaskedText:
    """The masked words of a step (BERT's rule) and what MLM predicts.

    Attributes:
        input_ids: ``(b, l)`` the ids after masking.
        attention_mask: ``(b, l)`` truthy at real tokens.
        labels: ``(b, l)`` the original ids at the chosen positions, ``-100`` elsewhere.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


@dataclass
class MaskedInputs:
    """What the single masked pass was run on (``ModelOutput.masked``); ``None`` where nothing masked it."""

    video: MaskedVideo | None = None
    text: MaskedText | None = None


def check_masked_pass(value: str) -> str:
    if value not in MASKED_PASSES:
        raise ConfigError(f"masked_pass: unknown value {value!r}; choose one of {', '.join(MASKED_PASSES)}")
    return value


def _masker(objectives: Iterable[nn.Module], method: str) -> nn.Module | None:
    found = [o for o in objectives if callable(getattr(o, method, None))]
    if len(found) > 1:
        names = ", ".join(getattr(o, "registry_name", "") or type(o).__name__ for o in found)
        raise ConfigError(
            f"masked_pass single: objectives {names} each mask the inputs ({method}); one pass holds one "
            f"masking of each; use masked_pass: separate"
        )
    return found[0] if found else None


def masked_forward(model: nn.Module, batch: dict[str, Any], objectives: Iterable[nn.Module]) -> ModelOutput:
    """The model's forward on the inputs that the objectives mask (see the module docstring).

    Returns the :class:`ModelOutput` of one backbone, one text-encoder and one fusion-and-head pass,
    with ``masked`` set to the :class:`MaskedInputs`; inputs no objective masks go in unchanged (and
    the video through the feature cache, if any).
    """
    if getattr(model.head, "task", None) == "multiple_choice" and "options" in batch:
        raise ConfigError(
            "masked_pass single: the batch holds multiple-choice options, and the single masked pass "
            f"reads batch[{model.text_field!r}]; use masked_pass: separate for multiple-choice data"
        )
    objectives = list(objectives)
    video_masker, text_masker = _masker(objectives, "mask_video"), _masker(objectives, "mask_text")
    texts = [str(t) for t in batch[model.text_field]]
    masked = MaskedInputs(
        video=video_masker.mask_video(model, batch) if video_masker is not None else None,
        text=text_masker.mask_text(model, texts) if text_masker is not None else None,
    )
    if masked.video is None:
        video = model.encode_video(batch["video"], batch)
    else:  # a feature cache holds the unmasked clips' features
        video = model.encode_video(masked.video.pixels, batch, use_cache=False)
    if masked.text is None:
        text = model.encode_text(texts)
    else:
        text = model.text_encoder(masked.text.input_ids, masked.text.attention_mask)
    out = model.forward_features(video, text, model.targets(batch))
    out.masked = masked
    return out
