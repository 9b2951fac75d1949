"""Multi-stream video backbone: one independently weighted backbone per stream of a clip.

Co-tokenization (Piergiovanni et al., "Video Question Answering with Iterative Video-Text
Co-Tokenization", ECCV 2022) reads one clip as several streams that trade frames for
resolution (32x64², 16x112², 8x224²), each through its own X3D. A dataset decodes the clip
once and emits the streams as a tuple (``streams:`` in the recipe's ``dataset_args``); this
backbone runs stream ``s`` through ``backbones[s]``::

    video = ( (b, t_0, 3, h_0, w_0),   (b, t_1, 3, h_1, w_1),   ...,  (b, t_S-1, ...) )
                     │                         │                              │
                     ▼                         ▼                              ▼
               backbones[0]              backbones[1]         ...      backbones[S-1]
             (own weights, any         (own weights, any              (own weights)
              registered backbone)      registered backbone)
                     │                         │                              │
                     ▼                         ▼                              ▼
             VideoFeatures_0           VideoFeatures_1        ...     VideoFeatures_S-1
                     └─────────────────────────┴──────────────┬───────────────┘
                                                              ▼
        VideoFeatures(tokens = tokens_0, cls = cls_0, frame_mask = frame_mask_0,
                      streams = (VideoFeatures_0, ..., VideoFeatures_S-1))

The top level holds the first stream (the convention of :class:`VideoFeatures`), so a part
that reads only ``tokens`` still sees real features; the parts in this library that would
drop the other streams (samplers, ``cross_attention``, ``la_gate``, ``vision_refinement``,
the feature cache) raise instead. Each stream keeps its own ``extras``; the top level has none.

In a recipe, each stream's backbone is given the way a top-level part is: a registry name,
or a name with its arguments::

    backbone:
      name: multi_stream
      backbones:
        - {name: x3d, preset: xs}     # stream 0: 32 x 64²
        - {name: x3d, preset: xs}     # stream 1: 16 x 112²
        - {name: x3d, preset: s}      # stream 2: 8 x 224²

Each is built with :func:`vqa_components.registry.create`, so plugins' backbones work too;
from Python, already-built :class:`Backbone` instances are accepted as well.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from vqa_components.interfaces import Backbone, ConfigError, VideoFeatures
from vqa_components.registry import BACKBONES, UnknownPartError, create

#: How a stream's backbone may be given: a registry name, ``{name: ..., **arguments}``, or a built part.
BackboneSpec = str | dict[str, Any] | Backbone


def one_stream(video: Tensor | Sequence[Tensor], owner: str) -> Tensor:
    """The pixels of a single-stream backbone: ``video`` itself, or the only tensor of a 1-tuple.

    Several streams raise :class:`ConfigError` (``owner`` names the backbone) rather than
    reading the first and dropping the others.
    """
    if isinstance(video, (tuple, list)):
        if len(video) != 1:
            raise ConfigError(
                f"backbone {owner} reads one video stream, but the batch holds {len(video)} (the dataset's "
                f"streams:): use backbone multi_stream with one backbone per stream, or give the dataset one stream"
            )
        return video[0]
    return video


def _check_arguments(cls: Any, args: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` for an argument ``cls`` does not take, with the closest ones."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to check: the constructor will say
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in args:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: unknown argument {key!r}{hint}; it takes {', '.join(valid) or 'none'}"
            )


def _build(spec: Any, index: int) -> Backbone:
    where = f"multi_stream backbones[{index}]"
    if isinstance(spec, Backbone):
        return spec
    if isinstance(spec, nn.Module):
        raise ConfigError(
            f"{where}: {type(spec).__name__} is not a Backbone (vqa_components.interfaces.Backbone)"
        )
    if isinstance(spec, str):
        name, args = spec, {}
    elif isinstance(spec, Mapping) and "name" in spec:
        name = spec["name"]
        args = {k: v for k, v in spec.items() if k not in ("name", "init_args")}
        args.update(spec.get("init_args") or {})
    else:
        raise ConfigError(
            f"{where}: give a backbone by registry name (x3d), by name with arguments "
            f"({{name: x3d, preset: xs}}) or as a built Backbone; got {spec!r}"
        )
    if name == "multi_stream":
        raise ConfigError(f"{where}: a stream's backbone cannot itself be multi_stream")
    try:
        cls = BACKBONES.get(str(name))
    except UnknownPartError as exc:
        raise UnknownPartError(f"{where}: {exc}") from None
    _check_arguments(cls, args, f"{where} ({name})")
    try:
        part = create("backbone", str(name), **args)
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{where} ({name}): {message}") from exc
    return part


@BACKBONES.register("multi_stream")
class MultiStreamBackbone(Backbone):
    """One independently weighted backbone per video stream (co-tokenization's per-stream X3Ds).

    Args:
        backbones: one entry per stream, in the order of the dataset's ``streams:``: a
            registry name (``"x3d"``), a name with arguments (``{"name": "x3d", "preset": "s"}``;
            ``init_args`` is merged in too), or a built :class:`Backbone`. Entries never share
            weights, even when they are alike.

    Attributes:
        backbones: the stream backbones (``nn.ModuleList``); ``state_dict`` keys are
            ``backbones.<s>.<...>``.
        num_streams: ``S``.
        out_dims: each stream's token width, ``(d_0, ..., d_S-1)``.
        out_dim: the common width when every stream has the same one; otherwise the first
            stream's, and consumers must read ``out_dims``.
        cacheable: whether every stream's backbone is (the feature cache still refuses
            several streams: it stores one stream's features).

    ``forward(video)`` takes a tuple (or list) of ``S`` pixel tensors ``(b, t_s, 3, h_s, w_s)``
    (a single tensor when ``S = 1``) and returns ``VideoFeatures`` whose ``streams`` are each
    backbone's output and whose ``tokens``/``cls``/``frame_mask`` are the first stream's.
    A different number of streams raises :class:`ConfigError` (a ``ValueError``) naming both counts.
    """

    def __init__(self, backbones: Sequence[BackboneSpec]) -> None:
        super().__init__()
        if isinstance(backbones, (str, Mapping)) or not isinstance(backbones, Sequence) or not backbones:
            raise ConfigError(
                f"multi_stream: backbones must be a non-empty list, one backbone per stream; got {backbones!r}"
            )
        built = [_build(spec, i) for i, spec in enumerate(backbones)]
        seen: dict[int, int] = {}
        for i, part in enumerate(built):
            if id(part) in seen:
                raise ConfigError(
                    f"multi_stream: backbones[{seen[id(part)]}] and backbones[{i}] are the same module; "
                    f"each stream needs its own backbone (its own weights)"
                )
            seen[id(part)] = i
        self.backbones = nn.ModuleList(built)
        self.num_streams = len(built)
        self.out_dims = tuple(int(b.out_dim) for b in built)
        self.out_dim = self.out_dims[0]
        self.cacheable = all(bool(getattr(b, "cacheable", False)) for b in built)
        self._own_weights_source: str | None = None
        self.config = {
            "backbones": [
                {"name": b.registry_name or type(b).__qualname__, "config": getattr(b, "config", repr(b))}
                for b in built
            ]
        }

    # ------------------------------------------------------------ weights
    @property
    def frozen(self) -> bool:
        """Whether any stream's backbone was built frozen (``frozen=True``)."""
        return any(bool(getattr(b, "frozen", False)) for b in self.backbones)

    @property
    def weights_source(self) -> str | None:  # type: ignore[override]
        """Where the weights came from: the file ``init_from`` loaded this whole part from, else
        ``"stream 0: <file>; stream 1: <file>; ..."`` when every stream's backbone with parameters
        loaded weights of its own, else ``None`` (some stream still has its random initialisation)."""
        if self._own_weights_source is not None:
            return self._own_weights_source
        sources = []
        for s, b in enumerate(self.backbones):
            if next(b.parameters(), None) is None:
                continue
            source = getattr(b, "weights_source", None)
            if source is None:
                return None
            sources.append(f"stream {s}: {source}")
        return "; ".join(sources) or None

    @weights_source.setter
    def weights_source(self, value: str | None) -> None:
        self._own_weights_source = value

    # ------------------------------------------------------------ forward
    def forward(self, video: Tensor | Sequence[Tensor]) -> VideoFeatures:
        streams = (video,) if isinstance(video, Tensor) else tuple(video)
        if len(streams) != self.num_streams:
            raise ConfigError(
                f"multi_stream: got {len(streams)} video stream(s) for {self.num_streams} backbones; the dataset's "
                f"streams: must list one {{num_frames, frame_size}} per backbone"
            )
        feats = tuple(backbone(x) for backbone, x in zip(self.backbones, streams))
        sizes = [f.batch_size for f in feats]
        if len(set(sizes)) > 1:
            raise ValueError(f"multi_stream: the streams have different batch sizes {sizes}")
        first = feats[0]
        return VideoFeatures(tokens=first.tokens, cls=first.cls, frame_mask=first.frame_mask, streams=feats)

    def extra_repr(self) -> str:
        return f"num_streams={self.num_streams}, out_dims={self.out_dims}"
