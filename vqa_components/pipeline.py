"""The data flow of a VideoQA model, without Lightning::

    batch ─> encode_video (backbone) ───┐
          └> encode_text (text_encoder) ┴> fuse (sampler, fusion) ─> head ─> ModelOutput

:class:`VideoQAPipeline` holds the parts that answer a question and runs them in that order.
:class:`~vqa_components.model.VideoQAModel` (the LightningModule that trains) is a pipeline with
objectives, optimisation and evaluation on top; ``vqa ask`` and the demo page answer with a bare
pipeline built from a model folder (:mod:`vqa_components.model_folder`), so that they start
without importing Lightning. Both run this code: an answer is the same whichever built the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vqa_components.interfaces import (
    Backbone,
    ConfigError,
    Fusion,
    FusionOutput,
    Head,
    ModelOutput,
    Sampler,
    SamplerOutput,
    TextEncoder,
    TextFeatures,
    VideoFeatures,
    pair_texts,
)
from vqa_components.layers.pixels import pixels_to_float

#: the parts the model's own forward runs (an objective with ``runs_model_forward`` needs them)
FORWARD_PARTS = ("backbone", "text_encoder", "fusion", "head")


class VideoQAPipeline(nn.Module):
    """Backbone, text encoder, optional sampler, fusion and head, run in the order the data flows.

    Args:
        backbone, text_encoder, fusion, head, sampler: the parts (``docs/concepts.md``).
        text_field: the batch key the text encoder reads (``question``; ``caption`` for pretraining).
        answer_vocab: the answers a classifying head's classes stand for.
    """

    def __init__(
        self,
        backbone: Backbone | None = None,
        text_encoder: TextEncoder | None = None,
        fusion: Fusion | None = None,
        head: Head | None = None,
        sampler: Sampler | None = None,
        text_field: str = "question",
        answer_vocab: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backbone, self.text_encoder, self.sampler = backbone, text_encoder, sampler
        self.fusion, self.head = fusion, head
        self.text_field = text_field
        self.answer_vocab: list[str] = list(answer_vocab)
        self.feature_cache: Any = None  # a FeatureCache (VideoQAModel's feature_cache argument)
        self.frozen_parts: tuple[str, ...] = ()
        self.runs_forward = True

    def encode_text(self, texts: Sequence[str]) -> TextFeatures:
        return self.text_encoder.encode(list(texts))

    def encode_video(
        self, video: Tensor | tuple[Tensor, ...], batch: dict[str, Any] | None = None, use_cache: bool = True
    ) -> VideoFeatures:
        """Backbone features of ``video`` (``uint8`` pixels scaled to ``[0, 1]``), or of the batch's clips
        from the feature cache (``batch["video_key"]``) unless ``use_cache=False`` (changed pixels: MVM)."""
        video = pixels_to_float(video)
        keys = batch.get("video_key") if batch is not None else None
        if self.feature_cache is not None and use_cache and (keys is not None or isinstance(video, list)):
            return self.feature_cache.encode(video, keys, device=self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and "backbone" not in self.frozen_parts):
            return self.backbone(video)

    def fuse(
        self, video: VideoFeatures, text: TextFeatures, run_fusion: bool = True
    ) -> tuple[SamplerOutput | None, FusionOutput]:
        """Sampler and fusion; the output carries the video features it was given (``extras``
        ``["video_features"]``). ``run_fusion=False`` (a head reading unimodal features): no fusion."""
        sampled = self.sampler(video, text) if self.sampler is not None else None
        given = sampled.video if sampled is not None else video
        unfused = None if run_fusion else FusionOutput(pooled=given.cls.mean(1), tokens=given.flat_tokens())
        fused = unfused or self.fusion(given, text)
        fused.extras.setdefault("video_features", given)
        return sampled, fused

    def forward_features(
        self, video: VideoFeatures, text: TextFeatures, targets: Sequence[str] | None = None
    ) -> ModelOutput:
        """Sampler, fusion and head on encoded inputs; ``targets`` go to a head that trains on text. A
        head with ``uses_fusion = False`` reads the video features unfused (objectives call :meth:`fuse`)."""
        run_fusion = self.head is None or getattr(self.head, "uses_fusion", True)
        sampled, fused = self.fuse(video, text, run_fusion=run_fusion)
        # a head written before heads took targets keeps working: they are passed only when there are some
        head = self.head(fused, text) if targets is None else self.head(fused, text, targets=list(targets))
        return ModelOutput(video=video, text=text, fused=fused, head=head, sampled=sampled)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        if not self.runs_forward:
            names = ", ".join(getattr(self, "objectives", {}).keys())
            raise ConfigError(
                f"this model has no forward of its own: its objectives ({names}) "
                f"compute everything themselves; it trains and validates, but cannot answer questions"
            )
        video = self.encode_video(batch["video"], batch)
        if self.head.task == "multiple_choice" and "options" in batch:
            return self.forward_multiple_choice(video, batch)
        return self.forward_features(video, self.encode_text(batch[self.text_field]), self.targets(batch))

    def targets(self, batch: dict[str, Any]) -> list[str] | None:
        """The answer strings a generating head trains on (teacher forcing), if the batch has them."""
        if self.head is None or self.head.task != "generate" or "answer" not in batch:
            return None
        return list(batch["answer"])

    def forward_multiple_choice(self, video: VideoFeatures, batch: dict[str, Any]) -> ModelOutput:
        """Score each (question, option) pair; logits come back as ``(b, options)``."""
        options: list[list[str]] = batch["options"]
        n = len(options[0])
        if any(len(o) != n for o in options):
            raise ValueError("multiple choice: every question in a batch needs the same number of options")
        texts = [t for q, opts in zip(batch["question"], options) for t in pair_texts(q, opts)]
        out = self.forward_features(video.repeat_interleave(n), self.encode_text(texts))
        out.head.logits = out.head.logits.reshape(len(options), n)
        return out

    # ------------------------------------------------------------ answers
    @torch.no_grad()
    def answer(self, batch: dict[str, Any], top_k: int = 5) -> list[dict[str, Any]]:
        """Each sample's answer (the head's :meth:`~vqa_components.interfaces.Head.answers`, as the
        test and predict steps give it) and, for a head that scores answers, its ``top_k`` answers
        with their probabilities (softmax over the answer vocabulary, or over the options).

        Returns one ``{"answer": str, "top": [(answer, probability), ...]}`` per sample; ``top`` is
        empty for a generating head (its answer is the generated text).
        """
        if self.head is None or self.head.task == "retrieval":
            raise ConfigError("this model ranks videos and texts against each other; it does not answer questions")
        out = self(batch)
        answers = self.head.answer_texts(self.head.answers(out), batch, self.answer_vocab)
        rows: list[dict[str, Any]] = [{"answer": a, "top": []} for a in answers]
        if self.head.task == "generate":
            return rows
        probs = out.logits.float().softmax(-1)
        k = min(top_k, probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)
        for i, row in enumerate(rows):
            names = batch["options"][i] if self.head.task == "multiple_choice" else self.answer_vocab
            row["top"] = [
                (names[j] if j < len(names) else str(j), float(p))
                for p, j in zip(values[i].tolist(), indices[i].tolist())
            ]
        return rows
