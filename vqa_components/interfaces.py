"""The one interface of each kind of part, and the typed values they exchange.

Shapes use einops names: ``b`` batch, ``t`` frames, ``n`` tokens per frame,
``l`` text tokens, ``m`` fused tokens, ``d`` width, ``c`` classes.

Data flow of :class:`vqa_components.model.VideoQAModel`::

    batch["video"] ──► Backbone ──► VideoFeatures ──► Sampler? ──► VideoFeatures ─┐
    batch["question"] ─► TextEncoder ─► TextFeatures ─────────┬───────────────────┤
                                                              ▼                   ▼
                                                            Fusion ──► FusionOutput ──► Head ──► HeadOutput
    (Objectives read the model, the batch and every intermediate value: ModelOutput)

A part only needs to match the widths of its neighbours: every backbone and
text encoder exposes ``out_dim``, every fusion ``out_dim``, and fusions and
heads take the widths they connect as constructor arguments.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn


class ConfigError(ValueError):
    """A part or model argument that cannot work; ``vqa`` prints it as one line (exit status 2)."""


# --------------------------------------------------------------------- values


@dataclass
class VideoFeatures:
    """Output of a backbone (and of a sampler).

    Attributes:
        tokens: ``(b, t, n, d)`` per-frame tokens (patches, grid cells, ...).
        cls: ``(b, t, d)`` one global vector per frame.
        frame_mask: ``(b, t)`` bool, ``True`` where a frame is real (not padding);
            ``None`` means every frame is real.
        streams: for multi-stream backbones (several frame rates / resolutions of
            one clip, as in co-tokenization), the features of each stream;
            ``tokens``/``cls`` then hold the first stream.
        extras: anything else a part wants to pass on (e.g. selection weights).
    """

    tokens: Tensor
    cls: Tensor
    frame_mask: Tensor | None = None
    streams: tuple[VideoFeatures, ...] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def flat_tokens(self) -> Tensor:
        """``(b, t*n, d)``: every token of every frame, frame-major."""
        b, t, n, d = self.tokens.shape
        return self.tokens.reshape(b, t * n, d)

    def replace(self, **changes: Any) -> VideoFeatures:
        return replace(self, **changes)


@dataclass
class TextFeatures:
    """Output of a text encoder.

    Attributes:
        tokens: ``(b, l, d)`` word-level features.
        cls: ``(b, d)`` sentence-level feature.
        mask: ``(b, l)`` bool, ``True`` at real (non-padding) tokens.
        input_ids: ``(b, l)`` the token ids that were encoded.
    """

    tokens: Tensor
    cls: Tensor
    mask: Tensor
    input_ids: Tensor | None = None

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]


@dataclass
class SamplerOutput:
    """Output of a frame sampler.

    Attributes:
        video: the selected frames' features, ``tokens (b, k, n, d)``.
        weights: ``(b, k, t)`` selection matrix (one-hot rows for hard selection;
            straight-through samplers carry gradients in it).
        indices: ``(b, k)`` index of the frame chosen for each slot (argmax of
            ``weights``).
    """

    video: VideoFeatures
    weights: Tensor
    indices: Tensor


@dataclass
class FusionOutput:
    """Output of a fusion.

    Attributes:
        pooled: ``(b, d)`` one vector per sample (what classifier heads read).
        tokens: ``(b, m, d)`` fused token sequence (for token-level heads; generating heads are planned).
        mask: ``(b, m)`` bool or ``None``.
        extras: e.g. ``gates`` of LA-Gate blocks, attention maps.
    """

    pooled: Tensor
    tokens: Tensor
    mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadOutput:
    """Output of a head.

    Attributes:
        logits: ``(b, c)`` class scores (answer vocabulary or options), or
            ``(b, l, vocab)`` token scores for a generating head (planned).
        predictions: decoded answers, if the head generates text.
    """

    logits: Tensor
    predictions: list[str] | None = None


@dataclass
class ModelOutput:
    """Everything one forward pass of :class:`VideoQAModel` computed."""

    video: VideoFeatures
    text: TextFeatures
    fused: FusionOutput
    head: HeadOutput
    sampled: SamplerOutput | None = None

    @property
    def logits(self) -> Tensor:
        return self.head.logits


# ----------------------------------------------------------------- base classes


class Part(nn.Module):
    """Base of every part. ``registry_name`` is set by ``@REGISTRY.register``.

    ``weights_source`` says where the part's weights came from: ``None`` while they are the
    random initialisation; the file or folder a part's own loading code read (``checkpoint``,
    ``pretrained_path``), or the ``init_from`` file that :class:`~vqa_components.model.VideoQAModel`
    loaded it from. Frozen parts must have one (``VideoQAModel(allow_random_frozen=...)``).
    """

    registry_name: str = ""
    weights_source: str | None = None


class Backbone(Part):
    """Video -> :class:`VideoFeatures`.

    ``forward(video)`` takes ``(b, t, 3, h, w)`` float pixels in ``[0, 1]``, or
    a tuple of such tensors (one per stream) for multi-stream backbones.
    Subclasses set ``out_dim``. ``frozen`` backbones may have their outputs
    cached on disk (see ``cacheable``).
    """

    out_dim: int
    #: Whether ``forward`` is a pure function of pixels and weights (no dropout,
    #: no batch statistics) so that its output may be cached when frozen.
    cacheable: bool = False

    def forward(self, video: Tensor | tuple[Tensor, ...]) -> VideoFeatures:
        raise NotImplementedError


class TextEncoder(Part):
    """Strings -> :class:`TextFeatures`.

    A text encoder owns its tokenizer: ``tokenize(list[str]) -> dict`` with
    ``input_ids`` and ``attention_mask`` ``(b, l)`` on the encoder's device;
    ``forward(input_ids, attention_mask)``; ``encode(texts)`` does both.
    Subclasses set ``out_dim``, ``vocab_size``, ``pad_token_id`` and
    ``mask_token_id`` (used by masked-language objectives), and
    ``special_token_ids`` (ids never masked).
    """

    out_dim: int
    vocab_size: int
    pad_token_id: int
    mask_token_id: int
    special_token_ids: tuple[int, ...] = ()

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        raise NotImplementedError

    def encode(self, texts: list[str]) -> TextFeatures:
        tok = self.tokenize(list(texts))
        return self(tok["input_ids"], tok["attention_mask"])

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


class Sampler(Part):
    """Chooses ``k`` of the ``t`` frames: ``forward(video, text) -> SamplerOutput``."""

    num_frames: int

    def forward(self, video: VideoFeatures, text: TextFeatures) -> SamplerOutput:
        raise NotImplementedError


class Fusion(Part):
    """Joins video and text: ``forward(video, text) -> FusionOutput`` of width ``out_dim``."""

    out_dim: int

    def forward(self, video: VideoFeatures, text: TextFeatures) -> FusionOutput:
        raise NotImplementedError


#: What a head's output means to :class:`~vqa_components.model.VideoQAModel` (``Head.task``).
HEAD_TASKS = ("classify", "multiple_choice", "retrieval")


def check_head_task(task: object, owner: str) -> None:
    """Raise :class:`ConfigError` unless ``task`` is one of :data:`HEAD_TASKS`."""
    if task in HEAD_TASKS:
        return
    if task == "generate":
        hint = " (generating heads are planned, not supported yet)"
    else:
        close = difflib.get_close_matches(str(task), HEAD_TASKS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{owner}: unknown head task {task!r}{hint}; set task to one of {', '.join(HEAD_TASKS)}")


class Head(Part):
    """Fused features -> answer scores: ``forward(fused, text) -> HeadOutput``.

    ``task`` says how the model treats the output, one of :data:`HEAD_TASKS`
    (checked when a subclass is defined and when ``task`` is assigned):

    * ``"classify"``: logits ``(b, c)`` over the answer vocabulary; the model
      reports answer accuracy (overall and per question family).
    * ``"multiple_choice"``: one logit per question+option pair, regrouped to
      ``(b, options)``; accuracy as for ``classify``.
    * ``"retrieval"``: ``(b, b)`` video-text similarities; no answer accuracy
      (the objectives log their losses).

    Generating heads (token logits and decoded ``predictions``) are planned.
    """

    task: str = "classify"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_head_task(cls.task, f"head {cls.__module__}.{cls.__qualname__}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "task":
            check_head_task(value, f"head {type(self).__qualname__}")
        super().__setattr__(name, value)

    def forward(self, fused: FusionOutput, text: TextFeatures) -> HeadOutput:
        raise NotImplementedError


class Objective(Part):
    """A training loss. ``forward(model, batch, out) -> dict`` with key ``"loss"``.

    Objectives see the whole model (to run extra forward passes: swapped
    captions, masked text, masked pixels with a frozen tagger, ...), the batch and
    the default forward's :class:`ModelOutput`. Other keys of the returned dict
    are logged. ``weight`` scales ``"loss"`` in the total.
    """

    weight: float = 1.0

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        raise NotImplementedError
