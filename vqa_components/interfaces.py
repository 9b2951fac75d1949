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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from vqa_components.errors import ConfigError  # re-exported: parts import it from here (layers/ from errors)

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
            ``tokens``/``cls`` then hold the first stream. Each stream has its own
            ``t``, ``n`` and ``d`` but the same ``b``.
        extras: anything else a part wants to pass on (e.g. selection weights).
        grid: ``(h', w')`` when ``n == h' * w'`` tokens per frame come from a spatial grid (row-major),
            so that a block of pixels maps to token positions: token ``i * w' + j`` of a frame
            covers the pixels ``[i*H/h', (i+1)*H/h') x [j*W/w', (j+1)*W/w')`` of an ``H x W`` frame
            (what masked video modelling needs); ``None`` when the tokens are not a grid.

    Row operations (:meth:`select`, :meth:`repeat_interleave`) pick or repeat samples of the
    batch and return new features in which every row-indexed value follows: ``tokens``,
    ``cls``, ``frame_mask``, every stream (recursively) and every ``extras`` value whose
    leading dimension is the batch size (tensors, and lists, tuples and dicts of them;
    ``None`` is kept). Nothing is dropped or left with the old rows: an extra that cannot be
    mapped (a tensor whose first dimension is not ``b``, a 0-d tensor, a string, a number, ...)
    or a stream with another batch size raises :class:`ValueError` naming it.
    """

    tokens: Tensor
    cls: Tensor
    frame_mask: Tensor | None = None
    streams: tuple[VideoFeatures, ...] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    grid: tuple[int, int] | None = None

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    @property
    def batch_size(self) -> int:
        """``b``, the number of samples (rows)."""
        return self.tokens.shape[0]

    @property
    def num_streams(self) -> int:
        """Streams the features hold: ``len(streams)``, or 1 for single-stream features."""
        return 1 if self.streams is None else len(self.streams)

    def flat_tokens(self) -> Tensor:
        """``(b, t*n, d)``: every token of every frame, frame-major."""
        b, t, n, d = self.tokens.shape
        return self.tokens.reshape(b, t * n, d)

    def replace(self, **changes: Any) -> VideoFeatures:
        return replace(self, **changes)

    def select(self, rows: Tensor | Sequence[int]) -> VideoFeatures:
        """The samples ``rows`` (a 1-d integer tensor or a sequence of ints; repeats and any order
        allowed), as new features of batch size ``len(rows)``: ``out.tokens[i] == self.tokens[rows[i]]``,
        and so for every row-indexed value (see the class docstring)."""
        index = _row_index(rows, self.tokens.device)
        # index_select, not x[index]: with repeated rows the backward of indexing adds up in an order
        # that varies from run to run on a CPU (index_put_ with accumulate); index_select's does not
        return _map_rows(self, lambda x: x.index_select(0, index.to(x.device)), "select")

    def repeat_interleave(self, n: int) -> VideoFeatures:
        """Every sample ``n`` times in a row (``b -> b*n``; row ``i*n + j`` is sample ``i``), as
        ``Tensor.repeat_interleave(n, dim=0)`` does, for every row-indexed value."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"VideoFeatures.repeat_interleave: n must be a positive int, got {n!r}")
        return _map_rows(self, lambda x: x.repeat_interleave(n, dim=0), "repeat_interleave")


def _row_index(rows: Tensor | Sequence[int], device: torch.device) -> Tensor:
    """``rows`` as a 1-d long tensor (what :meth:`VideoFeatures.select` indexes with)."""
    if isinstance(rows, Tensor):
        if rows.ndim != 1 or rows.dtype == torch.bool or rows.is_floating_point() or rows.is_complex():
            raise ValueError(
                f"VideoFeatures.select: rows must be a 1-d integer tensor, got {rows.dtype} of shape {tuple(rows.shape)}"
            )
        return rows.long()
    values = list(rows)
    if any(isinstance(r, bool) or not isinstance(r, int) for r in values):
        raise ValueError(f"VideoFeatures.select: rows must be ints, got {values[:8]}")
    return torch.tensor(values, dtype=torch.long, device=device)


def _map_rows(video: VideoFeatures, fn: Any, op: str, where: str = "") -> VideoFeatures:
    """``video`` with ``fn`` (a row operation on tensors whose first dimension is ``b``) applied to
    every row-indexed value; ``where`` names a stream in error messages."""
    b = video.batch_size

    def rows_of(x: Tensor, name: str) -> Tensor:
        if x.ndim == 0 or x.shape[0] != b:
            first = "a 0-d tensor" if x.ndim == 0 else f"{x.shape[0]} rows"
            raise ValueError(
                f"VideoFeatures.{op}: {where}{name} has {first}, but the features have {b} samples"
            )
        return fn(x)

    def extra(value: Any, name: str) -> Any:
        if value is None:
            return None
        if isinstance(value, Tensor):
            return rows_of(value, name)
        if isinstance(value, (list, tuple)):
            items = [extra(v, f"{name}[{i}]") for i, v in enumerate(value)]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # namedtuple
        if isinstance(value, dict):
            return {k: extra(v, f"{name}[{k!r}]") for k, v in value.items()}
        raise ValueError(
            f"VideoFeatures.{op}: {where}{name} is a {type(value).__name__}, which has no rows to "
            f"{op}; keep per-sample values in tensors whose first dimension is the batch"
        )

    streams = None
    if video.streams is not None:
        for i, s in enumerate(video.streams):
            if s.batch_size != b:
                raise ValueError(
                    f"VideoFeatures.{op}: {where}streams[{i}] has {s.batch_size} samples, but the features have {b}"
                )
        streams = tuple(_map_rows(s, fn, op, f"{where}streams[{i}].") for i, s in enumerate(video.streams))
    return replace(
        video,
        tokens=fn(video.tokens),
        cls=rows_of(video.cls, "cls"),
        frame_mask=None if video.frame_mask is None else rows_of(video.frame_mask, "frame_mask"),
        streams=streams,
        extras={k: extra(v, f"extras[{k!r}]") for k, v in video.extras.items()},
    )


def require_single_stream(video: VideoFeatures, part: str, does: str, remedy: str) -> None:
    """Raise :class:`ConfigError` if ``video`` holds more than one stream (a part that reads only
    ``tokens``/``cls`` would silently drop the others).

    The message reads ``"{part} {does}, but the backbone gives {k} streams (...): {remedy}"``,
    e.g. ``require_single_stream(video, "sampler uniform", "selects frames of one stream",
    "remove the sampler or use a single-stream backbone")``. One stream is allowed: ``tokens``
    and ``cls`` are that stream.
    """
    if video.num_streams > 1:
        raise ConfigError(
            f"{part} {does}, but the backbone gives {video.num_streams} streams (a multi-stream backbone "
            f"such as multi_stream): {remedy}"
        )


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
        tokens: ``(b, m, d)`` fused token sequence (what token-level and generating heads read).
        mask: ``(b, m)`` bool or ``None``.
        extras: e.g. ``gates`` of LA-Gate blocks, attention maps. A fusion whose output keeps
            one token per input token says where they are, for objectives that predict at
            those positions: ``text_tokens`` ``(b, l, d)`` (one per text token, masked language
            modelling) and ``video_tokens`` ``(b, t*n, d)`` (one per video token, frame-major,
            masked video modelling). :meth:`~vqa_components.model.VideoQAModel.fuse` adds
            ``video_features``: the :class:`VideoFeatures` the fusion was given (for heads that
            read the unimodal features).
    """

    pooled: Tensor
    tokens: Tensor
    mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadOutput:
    """Output of a head.

    Attributes:
        logits: ``(b, c)`` class scores (answer vocabulary or options), ``(b, b)``
            similarities (retrieval), or ``(b, l, vocab)`` token scores of a
            generating head (teacher-forced on ``target_ids`` when the head was given
            targets; one decoding step from the start token otherwise).
        target_ids: ``(b, l)`` the token ids a generating head was trained to emit
            (``-100`` at padding, ignored by the loss); ``None`` for other heads.

    A head's predicted answers come from ``Head.answers`` (a generating head decodes there).
    """

    logits: Tensor
    target_ids: Tensor | None = None


@dataclass
class ModelOutput:
    """Everything one forward pass of :class:`VideoQAModel` computed.

    ``text``, ``fused`` and ``head`` are ``None`` when the model ran only its backbone, because every
    objective reads only the video features (``Objective.reads_only_video``: caption pretraining).
    ``masked`` is set by the single masked pass (``VideoQAModel(masked_pass="single")``): the
    :class:`~vqa_components.objectives.masked_pass.MaskedInputs` the pass ran on; ``None`` for a
    forward on the batch as it is.
    """

    video: VideoFeatures
    text: TextFeatures
    fused: FusionOutput
    head: HeadOutput
    sampled: SamplerOutput | None = None
    masked: Any = None

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


#: ``count(texts)``: each text's token count before truncation (:meth:`TextEncoder.token_counter`).
TokenCounter = Callable[[list[str]], list[int]]


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

    def token_counter(self) -> tuple[int, TokenCounter] | None:
        """``(limit, count)``: the most tokens :meth:`tokenize` keeps of a text and a function giving
        each text's untruncated token count (special tokens included), or ``None`` when the encoder
        cannot count (then no question is screened as too long: ``model.on_long_question``)."""
        return None

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
HEAD_TASKS = ("classify", "multiple_choice", "retrieval", "generate")


def check_head_task(task: object, owner: str) -> None:
    """Raise :class:`ConfigError` unless ``task`` is one of :data:`HEAD_TASKS`."""
    if task in HEAD_TASKS:
        return
    close = difflib.get_close_matches(str(task), HEAD_TASKS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{owner}: unknown head task {task!r}{hint}; set task to one of {', '.join(HEAD_TASKS)}")


def pair_texts(question: str, options: Sequence[str]) -> list[str]:
    """What the model encodes for each option of a multiple-choice question (``task`` ``"multiple_choice"``)."""
    return [f"{question} {o}" for o in options]


class Head(Part):
    """Fused features -> answers: ``forward(fused, text, targets=None) -> HeadOutput``.

    ``task`` says how the model treats the output, one of :data:`HEAD_TASKS`
    (checked when a subclass is defined and when ``task`` is assigned):

    * ``"classify"``: logits ``(b, c)`` over the answer vocabulary.
    * ``"multiple_choice"``: one logit per question+option pair, regrouped to
      ``(b, options)`` by the model.
    * ``"retrieval"``: ``(b, b)`` video-text similarities; no answer accuracy. The
      head also gives ``embeddings(out) -> (video (b, e), text (b, e))``, which the
      retrieval metric ranks over the whole split (R@1/5/10, median rank).
    * ``"generate"``: token logits, trained on ``targets`` (the answer or caption
      strings) with teacher forcing; answers are generated text.

    A head owns the three decisions the model's training and evaluation ask of it:

    * ``forward(fused, text, targets)``: the scores; ``targets`` (the batch's answer
      strings) are given when the head trains on them (generating heads).
    * ``answers(out)``: the predicted answer of each sample: an index into the
      answer vocabulary (or the options), or the generated string.
    * ``has_ground_truth(batch)``: whether the batch holds what ``score`` compares
      with (the model neither generates nor scores answers otherwise);
      ``score(answers, batch)``: how right each answer is, ``(b,)`` floats in
      ``[0, 1]`` (1 = correct; a fraction for soft scores). The task's metric
      (:data:`vqa_components.metrics.TASK_METRICS`) averages these, overall and per
      question group, and reads the counts that answers name where the batch has a
      ``count``.
    """

    task: str = "classify"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_head_task(cls.task, f"head {cls.__module__}.{cls.__qualname__}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "task":
            check_head_task(value, f"head {type(self).__qualname__}")
        super().__setattr__(name, value)

    def forward(self, fused: FusionOutput, text: TextFeatures, targets: list[str] | None = None) -> HeadOutput:
        raise NotImplementedError

    def answers(self, out: ModelOutput) -> Tensor | list[str]:
        """The predicted answer per sample; default: the highest-scoring class or option, ``(b,)``."""
        return out.logits.argmax(-1)

    def answer_texts(self, answers: Tensor | list[str], batch: dict[str, Any], answer_vocab: Sequence[str]) -> list[str]:
        """:meth:`answers` as text: generated text as it is, an option's text, or the answer vocabulary's
        entry (its index as text where the vocabulary is unknown)."""
        if isinstance(answers, list):
            return answers
        if self.task == "multiple_choice":
            return [opts[i] for opts, i in zip(batch["options"], answers.tolist())]
        return [answer_vocab[i] if i < len(answer_vocab) else str(i) for i in answers.tolist()]

    def has_ground_truth(self, batch: dict[str, Any]) -> bool:
        """Whether ``batch`` holds the answers :meth:`score` compares with (here ``answer_idx``)."""
        if self.task == "multiple_choice" and "options" not in batch:
            return False
        return "answer_idx" in batch

    def score(self, answers: Tensor | list[str], batch: dict[str, Any]) -> Tensor:
        """``(b,)`` 1.0 where ``answers`` equals the batch's ``answer_idx``, else 0.0.

        An ``answer_idx`` of ``-1`` (an answer outside the vocabulary) never matches: such
        questions count as wrong, as the benchmarks' papers count them. A classifier whose batch
        has ``answers_idx`` (``(b, k)``: the vocabulary index of each of ``k`` annotators'
        answers, ``-1`` outside it; iVQA) scores the soft accuracy
        ``min(#annotators who gave the answer / 2, 1)`` instead
        (:func:`~vqa_components.metrics.soft_accuracy.annotator_agreement`).
        """
        if not isinstance(answers, Tensor):
            raise TypeError(f"{type(self).__name__}: its answers are text; a head that generates text overrides score")
        if self.task == "classify" and batch.get("answers_idx") is not None:
            # imported here: the metrics package imports this module
            from vqa_components.metrics.soft_accuracy import annotator_agreement

            given = torch.as_tensor(batch["answers_idx"], device=answers.device)
            return annotator_agreement((given == answers[:, None]) & (given >= 0))
        target = torch.as_tensor(batch["answer_idx"], device=answers.device)
        return (answers == target).float()


class Objective(Part):
    """A training loss. ``forward(model, batch, out) -> dict`` with key ``"loss"``.

    Objectives see the whole model (to run extra forward passes: swapped
    captions, masked text, masked pixels with a frozen tagger, ...), the batch and
    the default forward's :class:`ModelOutput`. Other keys of the returned dict
    are logged. ``weight`` scales ``"loss"`` in the total.

    An objective that computes everything itself (a first training stage with its own
    encoder, such as E-ViLM's video tokenizer) sets ``runs_model_forward = False``: when no
    objective of a model needs it, the model runs no default forward and passes
    ``out=None``, and it needs no backbone, fusion or head.

    :meth:`attach` is called once by the model after its parts are assembled (before any
    weights are loaded into it): an objective builds there what depends on the model's parts,
    e.g. a word classifier whose size is ``model.text_encoder.vocab_size``, so that the
    vocabulary size is given in one place.
    """

    weight: float = 1.0
    runs_model_forward: bool = True
    #: reads only ``out.video`` of the default forward (captioning, which runs sampler, fusion and head
    #: itself): when every objective that runs the forward says so, the model encodes the video and
    #: nothing else (``ModelOutput`` with ``text``, ``fused`` and ``head`` ``None``)
    reads_only_video: bool = False

    def attach(self, model: nn.Module) -> None:
        """Build what depends on ``model``'s parts (default: nothing)."""

    def forward(self, model: nn.Module, batch: dict[str, Any], out: ModelOutput) -> dict[str, Tensor]:
        raise NotImplementedError
