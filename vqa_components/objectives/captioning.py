"""Captioning: generate the paired text (caption or speech transcript) from the video (pretraining)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, ModelOutput, Objective
from vqa_components.objectives.answer_cross_entropy import token_cross_entropy
from vqa_components.registry import OBJECTIVES


@OBJECTIVES.register("captioning")
class Captioning(Objective):
    """Teacher-forced cross-entropy of the paired text, generated from the video and an optional prefix.

    ::

        video features (the backbone's, run once) ──────┐
        prefix text (batch[prefix_field], or "") ──► text encoder ─┴─► sampler? ─► fusion ─► text_decoder
                                                                        targets: batch[target_field]
        L = -(1/#tokens) sum_j log p(y_j | y_<j, video, prefix)

    The co-tokenization model pretrains on narrated video (HowTo100M, speech transcripts) by
    generating the text; its blog gives no more detail, so: the text is the record's
    ``caption`` (a transcript is a caption to this objective); the text encoder reads the
    prefix (e.g. the first words of the transcript, or a task prompt; by default an empty
    string, so the video alone conditions the decoder); the loss is the mean over target
    tokens. The backbone's features of the default forward are reused, so the clip is encoded
    once; sampler, fusion and head run again with the prefix in place of the question.

    Needs a generating head (``head: text_decoder``). It reads only the video features of the
    model's forward (``reads_only_video``): a model trained by captioning alone runs just the
    backbone before it, not the question through the text encoder, fusion and head as well.

    Args:
        target_field: the batch key of the text to generate.
        prefix_field: the batch key of the prefix, or ``None`` for no prefix.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        weight: scale of this loss in the total.
    """

    reads_only_video = True

    def __init__(
        self, target_field: str = "caption", prefix_field: str | None = None, label_smoothing: float = 0.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.target_field = target_field
        self.prefix_field = prefix_field
        self.label_smoothing = label_smoothing
        self.weight = weight

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        if model.head.task != "generate":
            raise ConfigError(
                f"objective captioning needs a generating head (head: text_decoder), "
                f"but the head {model.head.registry_name or type(model.head).__name__!r} has task {model.head.task!r}"
            )
        for field in (self.target_field, self.prefix_field):
            if field is not None and field not in batch:
                raise KeyError(f"captioning: the batch has no {field!r} field (it has {', '.join(sorted(batch))})")
        targets = list(batch[self.target_field])
        prefixes = list(batch[self.prefix_field]) if self.prefix_field else [""] * len(targets)
        captioned = model.forward_features(out.video, model.encode_text(prefixes), targets)
        return {"loss": token_cross_entropy(captioned.head, self.label_smoothing)}
