"""Generic video QA dataset: an annotation file plus a folder of videos.

A sample is a dict::

    video        (t, 3, h, w) uint8 pixels (the model scales them to [0, 1]), or a tuple of such tensors (multi-stream)
    question     str
    answer       str
    answer_idx   int, index of ``answer`` in ``answer_vocab`` (-1 when not in it)
    family       str, the record's ``question_type``
    video_id     str
    caption      str, the record's caption or ""
    options      list[str], only for records that have options
    index        int, position of the record in the annotation file
    video_key    str, only with ``feature_cache``: content key of the video file
                 and its decoding arguments (:func:`~vqa_components.data.feature_cache.video_content_key`)

With ``feature_cache`` and a known backbone fingerprint, ``video`` is a
:class:`~vqa_components.data.feature_cache.CachedClip` instead: the cached
features (the file is not decoded) or, on a miss, the decoded pixels.

Training and evaluation differ only with the options that draw at random
(``frame_sampling="random"``, ``crop_size``): a training dataset draws frame
positions and crops anew for every sample in every epoch, an evaluation one
takes evenly spaced frames and the centre crop.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqa_components.data.annotations import QARecord, load_qa_annotations
from vqa_components.data.bad_input import (
    DEFAULT_MAX_MISSING_FRACTION,
    MissingVideosError,
    SkippedSample,
    check_fraction,
    file_problem,
    missing_paths,
    video_cause,
)
from vqa_components.data.clip_transforms import FRAME_SAMPLINGS, ClipTransform, random_indices
from vqa_components.data.feature_cache import (
    CachedClip,
    active_fingerprint,
    has_entry,
    load_entry,
    video_content_key,
)
from vqa_components.data.video_io import VideoDecodeError, read_video_streams, uniform_indices
from vqa_components.registry import DATASETS

log = logging.getLogger(__name__)

#: ``answer_idx`` of an answer that is not in the vocabulary.
NOT_IN_VOCAB = -1
#: Frame size the example batch assumes for datasets decoded at native
#: resolution (``frame_size=None``), whose size is unknown without opening a video.
DEFAULT_EXAMPLE_FRAME_SIZE = 224
GENERIC_QUESTION = "what is happening in the video?"
BAD_VIDEO_POLICIES = ("skip", "raise")
#: Mixed into the seed of a dataset's random draws, so that they do not repeat the global RNG's stream.
_DRAW_STREAM = 0x5EED_C11B


@dataclass
class ExampleSpec:
    """What a dataset's samples look like, known without touching the disk.

    Attributes:
        video_shapes: ``(t, h, w)`` of each stream (one entry when single-stream).
        multi_stream: whether ``video`` is a tuple.
        questions: plausible question strings.
        answers: the answer vocabulary (may be empty if it lives in a file).
        families: question families.
        has_answers: whether samples carry an answer (``answer_idx``); caption datasets do not.
    """

    video_shapes: list[tuple[int, int, int]]
    multi_stream: bool
    questions: list[str] = field(default_factory=lambda: [GENERIC_QUESTION])
    answers: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    has_answers: bool = True


def normalize_streams(
    num_frames: int, frame_size: int | None, streams: Sequence[dict[str, Any]] | None
) -> list[tuple[int, int | None]]:
    """``(num_frames, frame_size)`` of each stream; ``streams`` overrides the single-stream args."""
    if streams is None:
        specs: list[dict[str, Any]] = [{"num_frames": num_frames, "frame_size": frame_size}]
    else:
        specs = list(streams)
        if not specs:
            raise ValueError("streams must hold at least one {'num_frames': ..., 'frame_size': ...}")
    out: list[tuple[int, int | None]] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise TypeError(f"streams[{i}] must be a dict with num_frames and frame_size, got {spec!r}")
        unknown = set(spec) - {"num_frames", "frame_size"}
        if unknown:
            raise ValueError(f"streams[{i}] has unknown keys {sorted(unknown)}; allowed: num_frames, frame_size")
        t = spec.get("num_frames", num_frames)
        size = spec.get("frame_size", None)
        if not isinstance(t, int) or isinstance(t, bool) or t <= 0:
            raise ValueError(f"streams[{i}].num_frames must be a positive int, got {t!r}")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise ValueError(f"streams[{i}].frame_size must be a positive int or None, got {size!r}")
        out.append((t, size))
    return out


def _positive_int_or_none(value: Any, name: str) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def check_preprocessing(
    streams: Sequence[tuple[int, int | None]],
    resize_short: int | None,
    crop_size: int | None,
    frame_sampling: str,
) -> None:
    """Raise one ``ValueError`` naming the option when ``resize_short``/``crop_size``/``frame_sampling``
    are invalid or contradict the streams' ``frame_size``."""
    if frame_sampling not in FRAME_SAMPLINGS:
        raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLINGS}, got {frame_sampling!r}")
    _positive_int_or_none(resize_short, "resize_short")
    _positive_int_or_none(crop_size, "crop_size")
    sized = sorted({s for _, s in streams if s is not None})
    if resize_short is not None and sized:
        raise ValueError(
            f"resize_short={resize_short} and frame_size={sized[0]} both resize the frames: set one "
            f"(resize_short keeps the aspect ratio, frame_size makes the frames square)"
        )
    if crop_size is not None:
        if resize_short is not None and crop_size > resize_short:
            raise ValueError(
                f"crop_size={crop_size} is larger than resize_short={resize_short}: "
                f"the crop must fit inside the resized frame"
            )
        if sized and crop_size > sized[0]:
            raise ValueError(
                f"crop_size={crop_size} is larger than frame_size={sized[0]}: the crop must fit inside the frame"
            )


def example_frame_side(size: int | None, resize_short: int | None, crop_size: int | None, default: int) -> int:
    """Frame side of an example batch (a frame resized by its shorter side is assumed square)."""
    return crop_size or resize_short or size or default


def load_answer_vocab(vocab: Sequence[str] | str | os.PathLike) -> list[str]:
    """An answer vocabulary from a list, a ``.json`` file (list of strings) or a text file (one per line)."""
    if isinstance(vocab, (str, os.PathLike)):
        path = Path(vocab)
        if not path.is_file():
            raise FileNotFoundError(f"answer vocabulary file not found: {path}")
        if path.suffix.lower() == ".json":
            items = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(items, list):
                raise ValueError(f"{path}: an answer vocabulary must be a JSON list of strings")
        else:
            items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        where = str(path)
    else:
        items, where = list(vocab), "answer_vocab"
    for i, a in enumerate(items):
        if not isinstance(a, str) or not a:
            raise ValueError(f"{where}: entry {i} must be a non-empty string, got {a!r}")
    dup = [a for a, c in Counter(items).items() if c > 1]
    if dup:
        raise ValueError(f"{where}: duplicate answers {dup[:5]}")
    return list(items)


def vocab_from_records(records: Sequence[QARecord], max_answers: int | None = None) -> list[str]:
    """Answers by decreasing frequency (ties alphabetical), keeping the ``max_answers`` most frequent."""
    counts = Counter(r.answer for r in records)
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[:max_answers] if max_answers is not None else ranked


def _for_split(value: str | os.PathLike | dict[str, str], split: str, what: str) -> Path:
    if isinstance(value, dict):
        if split not in value:
            raise KeyError(f"{what} has no entry for split {split!r}; it has {sorted(value)}")
        return Path(value[split])
    text = os.fspath(value)
    return Path(text.format(split=split) if "{split}" in text else text)


#: What ``video_dir`` may be: one folder, folders searched in order, or either of these per split
#: (plain types, so that a recipe and the command line can give each).
VideoDirs = str | list[str] | dict[str, str | list[str]]


def folders_for_split(
    value: Any, split: str, base: Path | None = None, what: str = "video_dir"
) -> tuple[Path, ...]:
    """The video folders of ``split``, in search order: ``value`` is one folder, a list of folders, or a
    ``{split: folder or list}`` dict; ``{split}`` in a folder is filled in, and a relative folder is
    taken relative to ``base`` when given (a benchmark's release folder)."""
    if isinstance(value, dict):
        if split not in value:
            raise ValueError(
                f"{what} has no folder for split {split!r} (it has {sorted(value)}); give one per split, "
                f"e.g. {{train: TrainValVideo, val: TrainValVideo, test: TestVideo}}, or a list of folders "
                f"searched in order"
            )
        value = value[split]
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    if not items:
        raise ValueError(f"{what} must name at least one folder")
    folders = []
    for item in items:
        text = os.fspath(item).format(split=split) if "{split}" in os.fspath(item) else os.fspath(item)
        folder = Path(text).expanduser()
        folders.append(base / folder if base is not None else folder)
    return tuple(folders)


def set_frame_options(
    target: Any,
    split: str,
    training: bool | None,
    num_frames: int,
    frame_size: int | None,
    streams: Sequence[dict[str, Any]] | None,
    resize_short: int | None,
    crop_size: int | None,
    frame_sampling: str,
    on_bad_video: str,
) -> None:
    """Check the options every dataset that reads clips takes and set them on ``target``: ``split``,
    ``training`` (``None``: ``split == "train"``), ``on_bad_video``, ``streams``, ``multi_stream``,
    ``frame_sampling`` and ``transform`` (the folder datasets, the benchmark adapters, ``streaming``)."""
    if on_bad_video not in BAD_VIDEO_POLICIES:
        raise ValueError(f"on_bad_video must be one of {BAD_VIDEO_POLICIES}, got {on_bad_video!r}")
    target.split = split
    target.training = split == "train" if training is None else bool(training)
    target.on_bad_video = on_bad_video
    target.streams = normalize_streams(num_frames, frame_size, streams)
    target.multi_stream = streams is not None
    check_preprocessing(target.streams, resize_short, crop_size, frame_sampling)
    target.frame_sampling = frame_sampling
    target.transform = ClipTransform(resize_short, crop_size, random_crop=target.training)


def describe_random_draws(training: bool, frame_sampling: str, transform: ClipTransform) -> list[str]:
    """What a dataset with these options draws at random for each sample, in words (empty at evaluation)."""
    if not training:
        return []
    draws = []
    if frame_sampling == "random":
        draws.append("random frame positions (frame_sampling='random')")
    if transform.random_crop and transform.crop_size is not None:
        draws.append(f"a random crop (crop_size={transform.crop_size})")
    return draws


def keyed_generator(*key: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``key`` (e.g. seed, epoch, index) mixed with this module's draw
    stream, so that the datasets' draws do not repeat the global RNG's."""
    mixed = np.random.SeedSequence([*key, _DRAW_STREAM]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


def frame_positions_for(training: bool, frame_sampling: str, generator: torch.Generator | None) -> Callable:
    """The frame positions of a clip: random ones drawn from ``generator`` for a training dataset with
    ``frame_sampling="random"``, else evenly spaced ones (``indices(num_available, num_frames)``)."""
    if training and frame_sampling == "random":
        return partial(random_indices, generator=generator)
    return uniform_indices


def read_clip(
    read: Callable[[Callable], tuple[Tensor, ...]],
    transform: ClipTransform,
    training: bool,
    frame_sampling: str,
    generator: torch.Generator | None,
    where: str,
) -> tuple[Tensor, ...]:
    """One clip's frames, as every dataset reads them: ``read(positions)`` (the ``uint8`` frames of each
    stream at :func:`frame_positions_for`'s positions), then ``transform`` (resize, crop) with the same
    ``generator``; a frame too small for the crop is a ``ValueError`` naming ``where``."""
    videos = read(frame_positions_for(training, frame_sampling, generator))
    if transform.identity:
        return videos
    try:
        return transform(videos, generator)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def find_clip(folders: Sequence[Path], name: str) -> Path:
    """``folder / name`` in the first of ``folders`` that holds it (no disk access with one folder); a
    clip found in none is given in the first folder (and reported missing there)."""
    if len(folders) > 1:
        for folder in folders:
            path = folder / name
            if os.path.lexists(path):
                return path
    return folders[0] / name


@DATASETS.register("videoqa_json")
class VideoQADataset(Dataset):
    """Video QA from an MSRVTT-QA-style annotation file and a folder of videos.

    Args:
        annotation_file: ``.json``/``.jsonl`` annotations; may contain ``{split}``
            (e.g. ``"anns/{split}.json"``) or be a ``{split: path}`` dict so the same
            arguments serve every split.
        video_dir: folder of videos (may contain ``{split}``); the video of a
            record is ``video_dir / (video_id + video_ext)``. A list of folders is searched in
            order (the first that holds a clip wins: releases that ship train-val and test clips
            in two archives), and a ``{split: folder or list}`` dict gives each split its own.
        split: which split this is (fills ``{split}``; reported for bad videos).
        answer_vocab: list of answers, or a ``.json``/``.txt`` file of them; ``None``
            builds it from the training annotations (``{split}`` -> ``train``) by
            frequency, keeping ``max_answers``.
        max_answers: size cap of a vocabulary built from annotations.
        num_frames: frames per clip.
        frame_size: resize frames to ``frame_size`` x ``frame_size``; ``None`` keeps
            the native resolution (then videos must share one size to be batched).
        streams: multi-stream decoding, ``[{"num_frames": 8, "frame_size": 224}, ...]``;
            ``video`` is then a tuple, one tensor per stream. Overrides the two above.
        resize_short: resize frames so that the shorter side is ``resize_short``, keeping the
            aspect ratio (instead of ``frame_size``, which must then be ``None``; applies to
            every stream).
        crop_size: crop a ``crop_size`` x ``crop_size`` region, the same for every frame (and
            stream) of a clip, after resizing: a random region in training, the centre at
            evaluation. Must fit inside ``resize_short``/``frame_size``.
        frame_sampling: ``"uniform"`` (evenly spaced frames) or ``"random"`` (sorted distinct
            positions drawn for every sample in every epoch; training only, evaluation is
            always uniform).
        training: whether this dataset serves training (random crops and positions) or
            evaluation; ``None``: ``split == "train"``. ``VideoQADataModule`` sets it per loader.
        video_ext: file extension of videos.
        on_bad_video: ``"skip"`` returns a :class:`SkippedSample` for a missing, empty or
            undecodable video, with its cause (the collate function drops it; the model
            reports each cause's count and first ids at the end of the epoch); ``"raise"``
            (strict mode) raises :class:`VideoDecodeError` naming the file, the record and
            ``video_id``: at start-up for the first missing or empty clip
            (:meth:`check_video_files`), when read for an undecodable one.
        feature_cache: root of a frozen backbone's feature cache (the same folder
            as ``VideoQAModel(feature_cache=...)``). Samples get ``video_key``; once
            the backbone's fingerprint is known, cached clips are served as
            features without decoding (see ``docs/parts/feature_cache.md``). Refused
            (``ValueError``) for a training dataset that draws crops or frame positions at
            random: cached features would freeze one draw for every epoch.
        feature_cache_fingerprint: the backbone's fingerprint; default: the one
            the model published in this process for ``feature_cache``.
        max_missing_fraction: with ``on_bad_video="skip"``, the largest fraction of the split's
            distinct clips that may be missing at start-up (a file-existence check, no decoding);
            more stops the run with :class:`~vqa_components.data.bad_input.MissingVideosError`
            naming the split, the folders looked in, the count and the first missing ids: a path
            set wrong, not a few bad files. ``1.0`` turns the check off. Present but undecodable
            clips are skipped and counted when read, whatever their number.
    """

    answer_vocab: list[str]
    families: list[str]

    def __init__(
        self,
        annotation_file: str | dict[str, str],
        video_dir: VideoDirs,
        split: str = "train",
        answer_vocab: list[str] | str | None = None,
        max_answers: int | None = None,
        num_frames: int = 16,
        frame_size: int | None = None,
        streams: list[dict[str, int]] | None = None,
        resize_short: int | None = None,
        crop_size: int | None = None,
        frame_sampling: str = "uniform",
        training: bool | None = None,
        video_ext: str = ".mp4",
        on_bad_video: str = "skip",
        feature_cache: str | None = None,
        feature_cache_fingerprint: str | None = None,
        max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
    ) -> None:
        super().__init__()
        self._init_decoding(
            split, training, num_frames, frame_size, streams, resize_short, crop_size, frame_sampling, on_bad_video
        )
        self.max_missing_fraction = check_fraction(max_missing_fraction, "max_missing_fraction")
        self.annotation_file = _for_split(annotation_file, split, "annotation_file")
        #: the folders this split's clips are looked for in, in order; ``video_dir`` is the first
        self.video_dirs = folders_for_split(video_dir, split)
        self.video_dir = self.video_dirs[0]
        self._found_clips: dict[str, Path] = {}
        self.video_ext = video_ext if not video_ext or video_ext.startswith(".") else "." + video_ext
        self.records: list[QARecord] = load_qa_annotations(self.annotation_file)
        if not self.records:
            log.warning("%s: no records for split %r", self.annotation_file, split)

        if answer_vocab is not None:
            self.answer_vocab = load_answer_vocab(answer_vocab)
        else:
            train_file = _for_split(annotation_file, "train", "annotation_file")
            train_records = (
                self.records if train_file == self.annotation_file else load_qa_annotations(train_file)
            )
            self.answer_vocab = vocab_from_records(train_records, max_answers)
        self._answer_to_idx = {a: i for i, a in enumerate(self.answer_vocab)}
        self.families = sorted({r.question_type for r in self.records})
        self._finish_init(feature_cache, feature_cache_fingerprint)

    def _init_decoding(
        self,
        split: str,
        training: bool | None,
        num_frames: int,
        frame_size: int | None,
        streams: list[dict[str, int]] | None,
        resize_short: int | None,
        crop_size: int | None,
        frame_sampling: str,
        on_bad_video: str,
    ) -> None:
        """Check and set the split, mode and frame options (shared with the benchmark adapters)."""
        set_frame_options(
            self, split, training, num_frames, frame_size, streams, resize_short, crop_size, frame_sampling, on_bad_video
        )
        self._rng: torch.Generator | None = None
        self._rng_seed: tuple[int, int] | None = None
        # the training loader's epoch seed (set_draw_seed); in shared memory, so that worker processes
        # see each new epoch's; -1: none (draws go on in a stream, see generator())
        self._draw_seed = torch.full((), -1, dtype=torch.int64).share_memory_()
        self._kept: dict[int, tuple[Tensor, ...]] | None = None  # decoded clips (keep_decoded)

    def _finish_init(self, feature_cache: str | None, feature_cache_fingerprint: str | None) -> None:
        """The constructor's last step, once the records are known (shared with the benchmark adapters):
        serve ``feature_cache``, then, in strict mode, check every clip file (:meth:`check_video_files`),
        else check that not too many are missing (:meth:`check_missing_videos`)."""
        self.enable_feature_cache(feature_cache, feature_cache_fingerprint)
        if self.on_bad_video == "raise":
            self.check_video_files()
        else:
            self.check_missing_videos()

    # ----------------------------------------------------------- feature cache
    def enable_feature_cache(self, root: str | os.PathLike | None, fingerprint: str | None = None) -> None:
        """Serve a backbone's feature cache (``root=None`` turns it off); see ``feature_cache`` above."""
        draws = self.random_draws()
        if root is not None and draws:
            raise ValueError(
                f"feature_cache stores one set of features per video, but the training split {self.split!r} "
                f"draws {' and '.join(draws)} anew in every epoch: the cache would freeze one draw. "
                f"Turn feature_cache off for this run, or train with frame_sampling='uniform' and no crop_size"
            )
        self.feature_cache = None if root is None else Path(root)
        self.feature_cache_fingerprint = fingerprint
        if self.feature_cache is not None and fingerprint is None:
            self.feature_cache_fingerprint = active_fingerprint(self.feature_cache)

    def random_draws(self) -> list[str]:
        """What this dataset draws at random for each sample, in words (empty at evaluation)."""
        return describe_random_draws(self.training, self.frame_sampling, self.transform)

    def decode_args(self) -> dict[str, Any]:
        """What, besides the file's bytes, determines the decoded pixels (part of ``video_key``)."""
        args: dict[str, Any] = {"reader": "read_video_streams/2", "streams": [list(s) for s in self.streams]}
        # /2: frames chosen by time and rotated upright (the reader of 2026-12); caches of the first reader are stale
        # only when set, so that the keys of caches written before these options stay valid
        if self.transform.resize_short is not None:
            args["resize_short"] = self.transform.resize_short
        if self.transform.crop_size is not None:  # with the cache on, crops are always centred
            args["crop"] = [self.transform.crop_size, "center"]
        return args

    def video_key(self, index: int) -> str:
        """Feature-cache key of record ``index``: file content + :meth:`decode_args` (file hash memoised)."""
        return video_content_key(self.video_path(index), **self.decode_args())

    def _feature_folder(self) -> Path | None:
        if self.feature_cache is None:
            return None
        if self.feature_cache_fingerprint is None:  # the model may have been built after this dataset
            self.feature_cache_fingerprint = active_fingerprint(self.feature_cache)
        if self.feature_cache_fingerprint is None:
            return None
        return self.feature_cache / self.feature_cache_fingerprint

    def _cached_video(self, index: int) -> tuple[str, Any]:
        """``(video_key, video)`` with the feature cache on: features if cached, else decoded pixels."""
        try:
            key = self.video_key(index)
        except OSError as exc:
            raise VideoDecodeError(self.video_path(index), f"cannot read the file: {exc}") from exc
        folder = self._feature_folder()
        if folder is not None and has_entry(folder, key):
            try:
                tokens, cls = load_entry(folder, key)
                return key, CachedClip(key, folder.name, tokens=tokens, cls=cls)
            except (OSError, ValueError, KeyError) as exc:  # removed or damaged meanwhile: decode instead
                log.debug("feature cache entry %s unreadable (%s); decoding the video", key, exc)
        videos = self._read_video(index)
        video = videos if self.multi_stream else videos[0]
        return key, video if folder is None else CachedClip(key, folder.name, video=video)

    def check_video_files(self) -> None:
        """Strict mode (``on_bad_video="raise"``): stop at start-up at the first record (in file order)
        whose clip is missing or empty, naming it; each clip is looked at once (no decoding: a
        corrupt clip stops the run when it is read)."""
        seen: set[Path] = set()
        for index in range(len(self.records)):
            path = self.video_path(index)
            if path in seen:
                continue
            seen.add(path)
            found = file_problem(path)
            if found is not None:
                raise VideoDecodeError(
                    path,
                    f"{found[1]} (record {index} of {self.annotation_file}, field 'video_id'="
                    f"{self.records[index].video_id!r}; on_bad_video: skip leaves such records out and reports them)",
                )

    def video_folders_searched(self) -> tuple[Path, ...]:
        """The folders this split's clips are looked for in (named when too many are missing)."""
        return self.video_dirs

    def check_missing_videos(self) -> None:
        """Stop at start-up when more than ``max_missing_fraction`` of the split's distinct clips do
        not exist (:func:`~vqa_components.data.bad_input.missing_paths`: one listing per folder),
        with one line naming the split, the folders, the count and the first missing ids."""
        if self.max_missing_fraction >= 1 or not len(self):
            return
        first: dict[Path, int] = {}
        for index in range(len(self)):
            first.setdefault(self.video_path(index), index)
        paths = list(first)
        missing = missing_paths(paths)
        if len(missing) <= self.max_missing_fraction * len(paths):
            return
        raise MissingVideosError(
            self.annotation_file,
            getattr(type(self), "registry_name", type(self).__name__),
            self.split,
            self.video_folders_searched(),
            [self.records[first[paths[i]]].video_id for i in missing],
            len(paths),
            self.max_missing_fraction,
        )

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.records)

    def video_path(self, index: int) -> Path:
        """The video file of record ``index`` (in the first of :attr:`video_dirs` that holds it)."""
        name = f"{self.records[index].video_id}{self.video_ext}"
        if len(self.video_dirs) == 1:
            return self.video_dir / name
        path = self._found_clips.get(name)
        if path is None:
            path = self._found_clips[name] = find_clip(self.video_dirs, name)
        return path

    def answer_index(self, answer: str) -> int:
        """Index of ``answer`` in ``answer_vocab``, or ``-1``."""
        return self._answer_to_idx.get(answer, NOT_IN_VOCAB)

    def generator(self) -> torch.Generator:
        """The ``torch.Generator`` of this process's random draws (frame positions, crops).

        Seeded from ``torch.initial_seed()`` and the distributed rank, and made again whenever
        these change. ``seed_everything`` sets the initial seed of the main process and
        DataLoader workers get ``base_seed + worker_id`` (Lightning's worker init, which
        ``vqa``'s ``seed_everything`` turns on, also mixes in the rank), so: a run is reproducible
        for a given seed and number of workers; every worker and rank draws its own stream (a
        worker's copy of the dataset carrying its parent's generator is re-seeded, since its
        initial seed differs); and epochs differ, because the stream goes on from epoch to epoch
        (persistent workers, or the main process) or restarts from a new base seed (workers
        started anew each epoch). A private generator rather than torch's global RNG: with
        ``num_workers=0`` the dataset runs in the training process, where the global RNG also
        drives dropout and the samplers' Gumbel noise; sharing it would make switching an
        augmentation on change the model's noise, and the model's draws change the crops.
        """
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        seed = (torch.initial_seed(), torch.distributed.get_rank() if distributed else 0)
        if self._rng is None or self._rng_seed != seed:
            self._rng = keyed_generator(*seed)
            self._rng_seed = seed
        return self._rng

    def set_draw_seed(self, seed: int) -> None:
        """Key this epoch's random draws on ``seed`` (the training loader's order calls it every epoch).

        A sample's frame positions and crop are then drawn from a generator seeded with ``seed`` and
        the sample's index: the same with any number of workers, and again after a resume in the middle
        of the epoch (:mod:`vqa_components.data.data_order`). Without it (the dataset indexed directly)
        draws go on in one stream per process (:meth:`generator`).
        """
        self._draw_seed.fill_(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)

    def sample_generator(self, index: int) -> torch.Generator:
        """The generator of sample ``index``'s draws: keyed on the epoch's seed and ``index`` once
        :meth:`set_draw_seed` was called, else this process's stream (:meth:`generator`)."""
        seed = int(self._draw_seed)
        if seed < 0:
            return self.generator()
        return keyed_generator(seed, index)

    def __getstate__(self) -> dict[str, Any]:  # a worker builds its own generator (see generator())
        state = self.__dict__.copy()
        state["_rng"], state["_rng_seed"] = None, None
        return state

    def keep_decoded(self, max_bytes: int) -> None:
        """Keep this split's decoded clips in this process's memory, if all of them fit in ``max_bytes``.

        For a split that draws nothing at random (every epoch decodes the same frames): the first
        clip read, times the number of records, decides; a split that would not fit keeps nothing (no
        memory grows for a corpus), one that does decodes each clip once and gives the kept tensors
        afterwards, the same pixels. The training loader asks for it (``data.keep_decoded_mb``): on
        few cores, decoding is what a tiny recipe's training step waits for (docs/benchmarks.md).
        Each loader worker keeps its own copy of what it reads.
        """
        self._kept = None if self.random_draws() else {}
        self._kept_budget, self._kept_bytes = int(max_bytes), 0

    def _keep(self, index: int, clip: tuple[Tensor, ...]) -> None:
        size = sum(t.numel() * t.element_size() for t in clip)
        if not self._kept and size * len(self) > self._kept_budget:
            log.info("%s split %r: %d decoded clips of ~%.1f MB would not fit in %.0f MB; decoding every epoch",
                     type(self).__name__, self.split, len(self), size / 2**20, self._kept_budget / 2**20)
            self._kept = None
        elif self._kept_bytes + size <= self._kept_budget:
            self._kept[index] = clip  # type: ignore[index]
            self._kept_bytes += size

    def _read_video(self, index: int) -> tuple[Tensor, ...]:
        """Decode the clip of record ``index``: one ``(t, 3, h, w)`` tensor per stream (kept in memory
        after :meth:`keep_decoded`)."""
        kept = self._kept
        if kept is not None and index in kept:
            return kept[index]
        clip = self._decode_clip(index)
        if kept is not None:
            self._keep(index, clip)
        return clip

    def _decode_clip(self, index: int) -> tuple[Tensor, ...]:
        generator = self.sample_generator(index) if self.random_draws() else None
        return read_clip(
            partial(self._decode, index), self.transform, self.training, self.frame_sampling, generator,
            f"{self.video_path(index)} (record {index})",
        )  # fmt: skip

    def _decode(self, index: int, positions: Callable[[int, int], list[int]]) -> tuple[Tensor, ...]:
        """The ``uint8`` frames of record ``index``, one tensor per stream, before resizing and cropping
        (a subclass that reads part of a file, or a folder of frames, overrides this)."""
        return read_video_streams(self.video_path(index), self.streams, dtype=torch.uint8, indices=positions)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        if index < 0:
            index += len(self.records)
        rec = self.records[index]
        key = None
        try:
            if self.feature_cache is not None:
                key, video = self._cached_video(index)
            else:
                videos = self._read_video(index)
                video = videos if self.multi_stream else videos[0]
        except VideoDecodeError as exc:
            if self.on_bad_video == "raise":
                raise VideoDecodeError(
                    exc.path,
                    f"{exc.reason} (record {index} of {self.annotation_file}, field 'video_id'={rec.video_id!r})",
                ) from exc
            log.debug("skipping record %d (video_id=%r) of split %r: %s", index, rec.video_id, self.split, exc)
            return SkippedSample(
                index=index, video_id=rec.video_id, path=exc.path, reason=exc.reason, cause=video_cause(exc.path)
            )
        sample: dict[str, Any] = {
            "video": video,
            "question": rec.question,
            "answer": rec.answer,
            "answer_idx": self.answer_index(rec.answer),
            "family": rec.question_type,
            "video_id": rec.video_id,
            "caption": rec.caption or "",
            "index": index,
        }
        if rec.options is not None:
            sample["options"] = list(rec.options)
        if key is not None:
            sample["video_key"] = key
        return sample

    # ------------------------------------------------------- shapes, no disk
    @classmethod
    def example_spec(cls, **kwargs: Any) -> ExampleSpec:
        """Sample shapes for these constructor arguments, without reading any file.

        With ``frame_size=None`` the native size is unknown;
        :data:`DEFAULT_EXAMPLE_FRAME_SIZE` is assumed; with ``crop_size`` the frames are
        ``crop_size`` square, with ``resize_short`` alone they are assumed square.
        """
        streams = normalize_streams(kwargs.get("num_frames", 16), kwargs.get("frame_size"), kwargs.get("streams"))
        resize, crop = kwargs.get("resize_short"), kwargs.get("crop_size")
        check_preprocessing(streams, resize, crop, kwargs.get("frame_sampling", "uniform"))
        vocab = kwargs.get("answer_vocab")
        answers = list(vocab) if isinstance(vocab, (list, tuple)) else []
        sides = [example_frame_side(s, resize, crop, DEFAULT_EXAMPLE_FRAME_SIZE) for _, s in streams]
        return ExampleSpec(
            video_shapes=[(t, side, side) for (t, _), side in zip(streams, sides)],
            multi_stream=kwargs.get("streams") is not None,
            answers=answers,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, records={len(self)}, "
            f"answers={len(self.answer_vocab)}, streams={self.streams}, training={self.training})"
        )
