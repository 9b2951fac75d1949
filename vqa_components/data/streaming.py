"""``streaming``: any dataset converted to LitData shards (``vqa shards``), read from a folder or object storage.

``vqa shards`` (:mod:`vqa_components.shards`) writes one LitData dataset per split, ``<out>/<split>/``
(``index.json`` and ``chunk-*.bin``), with ``vqa_shards.json`` beside them: what the source dataset
was (name, arguments, split), what each record stores, the answer vocabulary, the families, the kind
of data (``open_ended``, ``multiple_choice``, ``captions``...), its breakdowns and protocol, and the
records left out while converting (a missing or corrupt clip), with their causes. Each record is::

    video    the clip as it was on disk (the file's bytes; a frame folder: its frame files, one after
             the other), or with ``vqa shards --frames N --size S`` the decoded frames, (N, 3, S, S) uint8
    meta     JSON: the source sample's fields (question, answer, answer_idx, family, video_id, caption,
             index, options, a benchmark's own fields) and where the clip came from (``_clip``)

This dataset decodes the clip from memory (PyAV reads the bytes as it reads a file, through the same
reader as :mod:`~vqa_components.data.video_io`; frames through the same steps as
:mod:`~vqa_components.data.frame_folder`), applies the frame options of a folder dataset
(``num_frames``, ``frame_size``, ``streams``, ``resize_short``, ``crop_size``, ``frame_sampling``), and
returns exactly the sample of the source dataset: the same keys, ``video`` ``(t, 3, h, w)`` uint8, the
same pixels at evaluation (evenly spaced frames, centre crops).

Order, ranks and workers are LitData's: :meth:`StreamingVideoQADataset.make_loader` returns a
``litdata.StreamingDataLoader``, which shuffles chunks and the records inside them anew every epoch
(training only), gives each rank and worker its own records (none twice; in training under DDP,
``drop_last`` evens the ranks out, leaving out at most the remainder of records that do not fill a
batch on every rank and worker), and saves its position in Lightning's checkpoints, so that ``vqa fit
--ckpt_path last`` goes on in the middle of an epoch with the records not yet seen. Random draws
(``frame_sampling: random``, random crops) are keyed on the seed, the epoch and the record, so they
do not depend on the number of workers and repeat after a resume.

Bad input, as the folder datasets report it: a clip that does not decode becomes a
:class:`~vqa_components.data.bad_input.SkippedSample` (``on_bad_video: skip``, cause
``undecodable_video``; ``raise`` stops naming the record), and the records ``vqa shards`` left out
(``missing_video``, ``empty_video``, ``undecodable_video``, and malformed records) are the
dataset's :attr:`~StreamingVideoQADataset.skipped_records`, which the end-of-epoch report counts
every epoch, as a folder dataset counts a missing clip it meets every epoch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqa_components.data.bad_input import SkippedSample
from vqa_components.data.clip_transforms import ClipTransform
from vqa_components.data.dataset import (
    DEFAULT_EXAMPLE_FRAME_SIZE,
    ExampleSpec,
    check_preprocessing,
    describe_random_draws,
    example_frame_side,
    keyed_generator,
    normalize_streams,
    read_clip,
    set_frame_options,
)
from vqa_components.data.video_io import (
    Size,
    VideoDecodeError,
    _as_hw,
    finish_frames,
    frame_positions,
    read_video_streams,
    uniform_indices,
)
from vqa_components.registry import DATASETS

log = logging.getLogger(__name__)

#: The file beside each split's shards that describes them.
SHARDS_META = "vqa_shards.json"
#: Version of what ``vqa shards`` writes (bumped when a reader of an older one would misread it).
SHARDS_FORMAT = 1
#: What records' ``video`` holds: the clip as encoded on disk (a file's bytes, or a frame folder's files,
#: as the record's ``_clip.kind`` says), or decoded frames.
STORED = ("encoded", "decoded")
#: The key of a record's clip description in its ``meta``.
CLIP_KEY = "_clip"


def split_location(input_dir: str | os.PathLike, split: str) -> str:
    """The folder (or object-storage URL) of ``split``'s shards under ``input_dir``."""
    text = os.fspath(input_dir).rstrip("/")
    return f"{text}/{split}" if "://" in text else str(Path(text).expanduser() / split)


def read_shards_meta(location: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``vqa_shards.json`` of one split's shards (a local folder or an object-storage URL).

    Raises:
        FileNotFoundError: no converted split there (names the path and the command that writes one).
        ValueError: the file is not what ``vqa shards`` writes, or from a newer version.
    """
    path = f"{location}/{SHARDS_META}"
    if "://" in location:
        from litdata.streaming.fs_provider import _get_fs_provider

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, SHARDS_META)
            try:
                _get_fs_provider(path, storage_options or {}).download_file(path, local)
            except Exception as exc:  # each object store raises its own errors
                raise FileNotFoundError(
                    f"{path}: streaming: cannot read the shards' description ({type(exc).__name__}: {exc}); "
                    f"write the split with `vqa shards ... --out DIR` and upload DIR"
                ) from exc
            text = Path(local).read_text(encoding="utf-8")
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"{file}: streaming: no converted split here; write it with `vqa shards --config RECIPE "
                f"--out {Path(location).parent}` (or --dataset NAME --dataset_args ...)"
            )
        text = file.read_text(encoding="utf-8")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(meta, dict) or "format" not in meta or meta.get("stored") not in STORED:
        raise ValueError(
            f"{path}: not a description written by `vqa shards` (no 'format' and 'stored' fields)"
        )
    if meta["format"] > SHARDS_FORMAT:
        raise ValueError(
            f"{path}: written by a newer vqa-components (shards format {meta['format']}; this one reads up to "
            f"{SHARDS_FORMAT}): upgrade, or convert again"
        )
    return meta


def skipped_from_json(items: Sequence[dict[str, Any]]) -> list[SkippedSample]:
    """:class:`SkippedSample` objects from their ``_asdict()`` form (as ``vqa_shards.json`` lists them)."""
    return [SkippedSample(**{k: v for k, v in item.items() if k in SkippedSample._fields}) for item in items]


# ------------------------------------------------------------------ decoding from memory


def read_frame_bytes(
    frames: Sequence[bytes],
    streams: Sequence[tuple[int, Size]],
    dtype: torch.dtype = torch.uint8,
    indices: Callable[[int, int], Sequence[int]] = uniform_indices,
    *,
    name: str = "<frames>",
) -> tuple[Tensor, ...]:
    """:func:`~vqa_components.data.frame_folder.read_frame_folder` on a folder's frame files held in
    memory (in frame order): the same positions, image decoding and resizing.

    Raises:
        VideoDecodeError: no frames, an unreadable image, or frames of different sizes (names ``name``).
    """
    from torchvision.io import ImageReadMode, decode_image

    if not frames:
        raise VideoDecodeError(name, "no frames in the clip")
    per_stream = [frame_positions(indices, len(frames), k) for k, _ in streams]
    decoded = {}
    for i in sorted({i for pos in per_stream for i in pos}):
        try:
            raw = torch.frombuffer(bytearray(frames[i]), dtype=torch.uint8)
            decoded[i] = decode_image(raw, mode=ImageReadMode.RGB)
        except (RuntimeError, OSError, ValueError) as exc:
            raise VideoDecodeError(name, f"unreadable frame image {i} ({type(exc).__name__}: {exc})") from exc
    shapes = {tuple(t.shape) for t in decoded.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(name, f"frames of different sizes {sorted(shapes)} (c, h, w)")
    return tuple(
        finish_frames(torch.stack([decoded[i] for i in pos]), _as_hw(size), dtype)
        for pos, (_, size) in zip(per_stream, streams)
    )


def read_decoded(
    frames: np.ndarray,
    streams: Sequence[tuple[int, Size]],
    indices: Callable[[int, int], Sequence[int]] = uniform_indices,
) -> tuple[Tensor, ...]:
    """Frames of each stream from a clip stored decoded (``(n, 3, h, w)`` uint8): positions among the
    ``n`` stored frames, then resized to the stream's size where it differs."""
    out = []
    for k, size in streams:
        pos = frame_positions(indices, frames.shape[0], k)
        out.append(
            finish_frames(torch.from_numpy(frames[pos]), _as_hw(size), torch.uint8)
        )  # (a copy: writable)
    return tuple(out)


def split_frames(blob: bytes, sizes: Sequence[int]) -> list[bytes]:
    """The frame files of a frame folder stored one after the other (``sizes``: each file's length)."""
    if sum(sizes) != len(blob):
        raise VideoDecodeError(
            "<frames>", f"the stored frames hold {len(blob)} bytes, their sizes add up to {sum(sizes)}"
        )
    out, at = [], 0
    for n in sizes:
        out.append(blob[at : at + n])
        at += n
    return out


# ------------------------------------------------------------------ records -> samples


class ShardDecoder:
    """Turns a stored record (``{"video": ..., "meta": "..."}``) into the source dataset's sample.

    Used as the ``transform`` of the LitData dataset; it reads the epoch from that dataset (in a
    DataLoader worker, from the worker's copy) to key the random draws of training on
    ``(seed, epoch, record)``.

    Args:
        stored: what the records hold (one of :data:`STORED`).
        streams: ``(num_frames, frame_size)`` per stream.
        multi_stream: whether ``video`` is a tuple.
        transform: the resize and crop of the clip.
        frame_sampling: ``"uniform"`` or ``"random"`` (training only).
        training: random draws where the options ask for them.
        on_bad_video: ``"skip"`` (a :class:`SkippedSample`) or ``"raise"``.
        seed: the seed of the random draws.
        where: the shards' location, named in errors.
    """

    def __init__(
        self,
        stored: str,
        streams: list[tuple[int, int | None]],
        multi_stream: bool,
        transform: ClipTransform,
        frame_sampling: str,
        training: bool,
        on_bad_video: str,
        seed: int,
        where: str,
    ) -> None:
        self.stored, self.streams, self.multi_stream = stored, streams, multi_stream
        self.transform, self.frame_sampling, self.training = transform, frame_sampling, training
        self.on_bad_video, self.seed, self.where = on_bad_video, seed, where
        self.stream: Any = None  # the LitData dataset (set once it exists): its current_epoch

    @property
    def draws(self) -> bool:
        return bool(describe_random_draws(self.training, self.frame_sampling, self.transform))

    def generator(self, index: int) -> torch.Generator:
        return keyed_generator(self.seed, int(getattr(self.stream, "current_epoch", 0) or 0), index)

    def decode(self, video: Any, clip: dict[str, Any], index: int) -> tuple[Tensor, ...]:
        source = clip.get("source", "<shards>")

        def read(positions: Callable) -> tuple[Tensor, ...]:
            if self.stored == "decoded":
                return read_decoded(np.asarray(video), self.streams, positions)
            if clip.get("kind") == "frames":
                parts = split_frames(bytes(video), clip.get("sizes", []))
                return read_frame_bytes(parts, self.streams, torch.uint8, positions, name=source)
            return read_video_streams(
                source,
                self.streams,
                clip.get("start"),
                clip.get("end"),
                torch.uint8,
                positions,
                data=bytes(video),
            )

        generator = self.generator(index) if self.draws else None
        return read_clip(
            read, self.transform, self.training, self.frame_sampling, generator,
            f"{source} (record {index} of the shards in {self.where})",
        )  # fmt: skip

    def __call__(self, item: dict[str, Any]) -> dict[str, Any] | SkippedSample:
        fields = json.loads(item["meta"])
        clip = fields.pop(CLIP_KEY, {})
        index = int(fields.get("index", -1))
        video_id = str(fields.get("video_id", ""))
        try:
            videos = self.decode(item["video"], clip, index)
        except VideoDecodeError as exc:
            if self.on_bad_video == "raise":
                raise VideoDecodeError(
                    exc.path,
                    f"{exc.reason} (record {index} of the shards in {self.where}, field 'video_id'={video_id!r})",
                ) from exc
            cause = "empty_video" if exc.reason.startswith("file is empty") else "undecodable_video"
            log.debug("skipping record %d (video_id=%r) of %s: %s", index, video_id, self.where, exc)
            return SkippedSample(
                index=index, video_id=video_id, path=exc.path, reason=exc.reason, cause=cause
            )
        return {"video": videos if self.multi_stream else videos[0], **fields}


# ------------------------------------------------------------------ the loader

_LOADER_CLASS: type | None = None


def resumable_loader_class() -> type:
    """``litdata.StreamingDataLoader`` made to begin a new epoch after a resumed one (built on first use).

    Lightning's fit loop reads a loader with a length up to that length and no further (it fetches no
    batch ahead then, so the state a checkpoint saves after step ``k`` counts exactly ``k`` batches:
    nothing is repeated or skipped at the resume). LitData's loader leaves its resume mode only when
    an epoch's iterator is exhausted, which therefore never happens under Lightning: the epoch after a
    resumed one replayed the resumed epoch's last batches and ended there. This loader leaves resume
    mode when the iteration after the resumed one begins.
    """
    global _LOADER_CLASS
    if _LOADER_CLASS is None:
        from litdata import StreamingDataLoader

        class ResumableStreamingDataLoader(StreamingDataLoader):
            __doc__ = resumable_loader_class.__doc__
            _resumed_epoch = False  # whether the iteration under way began from a loaded state

            def load_state_dict(self, obj: dict[str, Any]) -> None:
                super().load_state_dict(obj)
                self._resumed_epoch = False

            def __iter__(self) -> Any:
                if self.restore and self._resumed_epoch:
                    self.restore = False  # the resumed epoch is over: the next one starts afresh
                self._resumed_epoch = self.restore
                yield from super().__iter__()

        ResumableStreamingDataLoader.__module__ = __name__
        _LOADER_CLASS = ResumableStreamingDataLoader
    return _LOADER_CLASS


def allow_plain_http(storage_options: dict[str, Any]) -> None:
    """Let LitData download chunks from an ``http://`` endpoint (``storage_options["endpoint_url"]``),
    such as a MinIO or Ceph gateway without TLS inside a cluster.

    LitData 0.2.76 reads ``index.json`` with boto3, which takes such an endpoint, but downloads chunks
    with obstore, whose client refuses plain HTTP unless told ``allow_http`` (obstore follows Rust's
    ``object_store``), and LitData gives it no way to be told: training then stops at the first chunk
    with "HTTP error: builder error". This adds ``allow_http`` to the client options LitData passes
    to obstore, for this process, and only when the endpoint asks for plain HTTP; a LitData without
    those options is left as it is.
    """
    endpoint = str(storage_options.get("endpoint_url") or "")
    if not endpoint.lower().startswith("http://"):
        return
    try:
        from litdata.streaming import downloader
    except ImportError:
        return
    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = "true"


# ------------------------------------------------------------------ the dataset


@DATASETS.register("streaming")
class StreamingVideoQADataset(Dataset):
    """A split of any dataset, read from the LitData shards ``vqa shards`` wrote (module docstring).

    Args:
        input_dir: the folder ``vqa shards --out`` wrote (one subfolder per split), local or an
            object-storage URL LitData reads (``s3://bucket/shards``, ``gs://...``).
        split: the split to read (``<input_dir>/<split>``).
        training: shuffle, and draw frame positions and crops at random where the options ask
            (``None``: ``split == "train"``). ``VideoQADataModule`` sets it per loader.
        num_frames, frame_size, streams, resize_short, crop_size, frame_sampling: as in
            :class:`~vqa_components.data.dataset.VideoQADataset`; frames are taken from the stored
            clip (with ``--frames N``: among its ``N`` decoded frames).
        on_bad_video: ``"skip"`` returns a :class:`SkippedSample` for a clip that does not decode;
            ``"raise"`` stops naming the record.
        seed: the seed of the shuffle and the random draws; ``None``: the process's
            ``torch.initial_seed()`` when the dataset is built (``seed_everything``'s).
        cache_dir: where LitData keeps the chunks it downloads (object storage only).
        max_cache_size: the most disk those chunks may take (LitData's ``max_cache_size``, e.g. ``"50GB"``).
        storage_options: credentials and options of the object store (LitData's ``storage_options``).
        max_pre_download: chunks downloaded ahead by each worker.
    """

    def __init__(
        self,
        input_dir: str,
        split: str = "train",
        training: bool | None = None,
        num_frames: int = 16,
        frame_size: int | None = None,
        streams: list[dict[str, int]] | None = None,
        resize_short: int | None = None,
        crop_size: int | None = None,
        frame_sampling: str = "uniform",
        on_bad_video: str = "skip",
        seed: int | None = None,
        cache_dir: str | None = None,
        max_cache_size: str | float | None = None,
        storage_options: dict[str, Any] | None = None,
        max_pre_download: int = 2,
    ) -> None:
        super().__init__()
        set_frame_options(
            self,
            split,
            training,
            num_frames,
            frame_size,
            streams,
            resize_short,
            crop_size,
            frame_sampling,
            on_bad_video,
        )
        self.location = split_location(input_dir, split)
        self.storage_options = dict(storage_options or {})
        self.meta = read_shards_meta(self.location, self.storage_options)
        self.stored: str = self.meta["stored"]
        #: the source dataset's answer vocabulary, families, kind and breakdowns, as converted
        self.answer_vocab: list[str] = list(self.meta.get("answer_vocab") or [])
        self.families: list[str] = list(self.meta.get("families") or [])
        self.kind: str | None = self.meta.get("kind")
        self.breakdowns: dict[str, list[str]] = dict(self.meta.get("breakdowns") or {})
        #: records ``vqa shards`` left out (missing or corrupt clips, malformed records), reported every epoch
        self.skipped_records: list[SkippedSample] = skipped_from_json(self.meta.get("skipped") or [])
        self.seed = (torch.initial_seed() if seed is None else int(seed)) & 0x7FFF_FFFF_FFFF_FFFF
        self.decoder = ShardDecoder(
            self.stored, self.streams, self.multi_stream, self.transform, frame_sampling, self.training,
            on_bad_video, self.seed, self.location,
        )  # fmt: skip
        self._stream_args = {
            "cache_dir": cache_dir,
            "max_cache_size": max_cache_size,
            "storage_options": self.storage_options,
            "max_pre_download": max_pre_download,
        }
        self._stream: Any = None

    @property
    def stream(self) -> Any:
        """The ``litdata.StreamingDataset`` over this split's shards (built on first use)."""
        if self._stream is None:
            from litdata import StreamingDataset

            args = {k: v for k, v in self._stream_args.items() if v is not None}
            allow_plain_http(self.storage_options)
            # litdata's own seed takes 32 bits (numpy); the draws keep all of self.seed
            self._stream = StreamingDataset(
                self.location, shuffle=self.training, seed=self.seed % 2**32, transform=self.decoder, **args
            )
            self.decoder.stream = self._stream
        return self._stream

    @property
    def protocol(self) -> dict[str, Any]:
        """The source dataset's protocol (how the split is scored), with where it is read from."""
        return {**(self.meta.get("protocol") or {}), "shards": self.location, "stored": self.stored}

    def __len__(self) -> int:
        return int(self.meta.get("num_samples", 0))

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        """Record ``index`` of the shards (their order, which is the source's order less the records left out)."""
        if index < 0:
            index += len(self)
        return self.stream[index]

    def make_loader(
        self,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """A ``litdata.StreamingDataLoader`` (:func:`resumable_loader_class`) over this split: shuffled in training (anew every epoch),
        records split across ranks and workers without duplicates, its position saved in checkpoints.

        Under DDP a training loader drops the records that do not fill a batch on every rank (so the
        ranks step together); an evaluation loader keeps every record (ranks may differ by a batch).
        """
        # Lightning warns that an iterable dataset's length may count duplicates across workers; LitData
        # gives each worker its own records, so the length is right
        warnings.filterwarnings(
            "ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning
        )
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        drop_last = self.training and distributed and torch.distributed.get_world_size() > 1
        return resumable_loader_class()(
            self.stream,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=collate_fn,
            shuffle=self.training,
            drop_last=drop_last,
            **kwargs,
        )

    # ------------------------------------------------------- shapes, no disk
    @classmethod
    def example_spec(cls, **kwargs: Any) -> ExampleSpec:
        """Sample shapes for these arguments; the vocabulary, families and kind come from the local
        ``vqa_shards.json`` of the training split when there is one (nothing is decoded)."""
        streams = normalize_streams(
            kwargs.get("num_frames", 16), kwargs.get("frame_size"), kwargs.get("streams")
        )
        resize, crop = kwargs.get("resize_short"), kwargs.get("crop_size")
        check_preprocessing(streams, resize, crop, kwargs.get("frame_sampling", "uniform"))
        sides = [example_frame_side(s, resize, crop, DEFAULT_EXAMPLE_FRAME_SIZE) for _, s in streams]
        spec = ExampleSpec(
            video_shapes=[(t, side, side) for (t, _), side in zip(streams, sides)],
            multi_stream=kwargs.get("streams") is not None,
        )
        input_dir = kwargs.get("input_dir")
        if input_dir and "://" not in str(input_dir):
            file = Path(split_location(input_dir, kwargs.get("split", "train"))) / SHARDS_META
            if file.is_file():
                meta = json.loads(file.read_text(encoding="utf-8"))
                spec.answers = list(meta.get("answer_vocab") or [])
                spec.families = list(meta.get("families") or [])
                spec.has_answers = meta.get("kind") != "captions"
        return spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_dir={self.location!r}, split={self.split!r}, records={len(self)}, "
            f"stored={self.stored!r}, streams={self.streams}, training={self.training})"
        )
