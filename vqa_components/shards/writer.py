"""Converting one split of a registered dataset into LitData shards (what ``vqa shards`` runs).

::

    source dataset (records 0..n-1, in its order)
      |  cut into parts of part_size records: [0, p), [p, 2p), ...
      v
    <out>/.parts/<split>/part-000000/   one LitData dataset per part (BinaryWriter, chunk_bytes chunks)
                         part-000001/   written by --workers processes; a part is done once its folder
                         ...            has its final name (written as .part-000001.tmp, then renamed)
      |  merge: chunks renamed (not copied) into one dataset, in part order; index.json last
      v
    <out>/<split>/index.json  chunk-0-0.bin ...  vqa_shards.json

A killed conversion, run again with the same arguments, keeps the finished parts, deletes the
half-written one and converts the rest: every record is converted once, and since a part's content
depends only on its records (not on the worker that wrote it, nor on how many workers ran), the
shards are byte for byte those of an uninterrupted run. A kill during the merge is resumed too
(each chunk's new name follows from the part order; ``index.json`` is written last).

Each record becomes ``{"video": ..., "meta": "<JSON>"}`` (:mod:`vqa_components.data.streaming`): the
clip as it is on disk (a file's bytes; a frame folder's frame files, within the record's frame range,
one after the other) or, with ``frames``/``size``, the clip decoded as the source dataset decodes it
for evaluation (``frames`` evenly spaced frames at ``size`` x ``size``); and the source sample's fields.
A record whose clip is missing, empty or (with ``verify``, the default) does not decode is left out
and counted by cause, as are the records the source dataset left out at start-up; the counts and
first ids are printed and written to ``vqa_shards.json``, and the ``streaming`` dataset reports them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vqa_components.data.bad_input import FIRST_IDS, SkippedSample, file_problem, startup_skips
from vqa_components.data.frame_folder import list_frames
from vqa_components.data.streaming import CLIP_KEY, SHARDS_FORMAT, SHARDS_META, skipped_from_json
from vqa_components.registry import DATASETS

log = logging.getLogger(__name__)

#: Records per part by default: the unit of work of a process and of resuming.
DEFAULT_PART_SIZE = 1000
#: LitData's recommended chunk size.
DEFAULT_CHUNK_BYTES = "64MB"
PARTS_DIR = ".parts"
#: What a finished part's folder holds besides its LitData dataset: its records and what it left out.
PART_SUMMARY = "part.json"
#: The arguments a conversion was started with (a resumed one must match them).
SPEC_FILE = "spec.json"
#: Sample keys that are not stored as text (the pixels; the feature cache's key of a folder).
NOT_STORED = ("video", "video_key")


class ShardsError(ValueError):
    """A conversion that cannot go on as asked (one line naming the folder and what to do)."""


@dataclass(frozen=True)
class ShardSpec:
    """Everything the shards of one split depend on.

    Attributes:
        dataset: the source dataset's registry name.
        dataset_args: its constructor arguments (``split`` and ``training`` are set here).
        split: the split converted.
        frames, size: store ``frames`` decoded frames of ``size`` x ``size`` instead of the clip's bytes.
        verify: decode every clip once (as the source dataset does for evaluation) and leave out those
            that fail; otherwise only a missing or empty clip is left out, and a corrupt one is met
            (and skipped) when read.
        part_size: records per part.
        chunk_bytes: the largest chunk LitData writes (``"64MB"``, or a number of bytes).
    """

    dataset: str
    dataset_args: dict[str, Any]
    split: str
    frames: int | None = None
    size: int | None = None
    verify: bool = True
    part_size: int = DEFAULT_PART_SIZE
    chunk_bytes: str | int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        if self.dataset == "streaming":
            raise ShardsError(
                "the source dataset is already `streaming` (shards); convert the dataset it was made from"
            )
        if (self.frames is None) != (self.size is None):
            raise ShardsError(
                "--frames and --size go together: store FRAMES decoded frames of SIZE x SIZE pixels"
            )
        for name in ("frames", "size", "part_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ShardsError(f"--{name} must be a positive integer, got {value!r}")

    @property
    def stored(self) -> str:
        return "encoded" if self.frames is None else "decoded"

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    def source_args(self) -> dict[str, Any]:
        """The source dataset's arguments for the conversion: evaluation mode, bad clips skipped and
        counted, no feature cache; with ``frames``, the frame options that decode what is stored."""
        args = {k: v for k, v in self.dataset_args.items() if k not in ("split", "training")}
        args.update(on_bad_video="skip", feature_cache=None)
        if self.frames is not None:
            for key in ("streams", "resize_short", "crop_size"):
                args.pop(key, None)
            args.update(num_frames=self.frames, frame_size=self.size, frame_sampling="uniform")
        return args

    def build(self) -> Any:
        """The source dataset of :attr:`split`, built for evaluation."""
        import inspect

        cls = DATASETS.get(self.dataset)
        args = self.source_args()
        params = inspect.signature(cls).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for key in ("on_bad_video", "feature_cache"):
            if key not in params and not takes_any:
                args.pop(key)
        if "training" in params or takes_any:
            args["training"] = False
        return cls(split=self.split, **args)


@dataclass
class ConversionReport:
    """What a conversion of one split did.

    Attributes:
        split: the split.
        location: the folder of its shards.
        samples: records stored.
        records: records of the source split.
        chunks: chunk files.
        bytes: their total size.
        skipped: records left out (at conversion and by the source dataset at start-up), with causes.
        parts: parts in all; ``converted`` by this run, ``reused`` from an earlier, killed one.
        seconds: wall time of this run.
    """

    split: str
    location: Path
    samples: int = 0
    records: int = 0
    chunks: int = 0
    bytes: int = 0
    skipped: list[SkippedSample] = field(default_factory=list)
    parts: int = 0
    converted: int = 0
    reused: int = 0
    seconds: float = 0.0
    already_done: bool = False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s.cause] = out.get(s.cause, 0) + 1
        return out

    def format(self) -> str:
        """One line of what was written, then one line per cause of what was left out, with the first ids."""
        if self.already_done:
            head = f"{self.split}: already converted in {self.location} ({self.samples} samples; --overwrite converts again)"
        else:
            resumed = (
                f", {self.reused} of {self.parts} parts kept from an interrupted run" if self.reused else ""
            )
            head = (
                f"{self.split}: {self.samples} of {self.records} records in {self.chunks} chunks "
                f"({self.bytes / 2**20:.1f} MiB) -> {self.location} ({self.seconds:.1f} s{resumed})"
            )
        lines = [head]
        if self.skipped:
            counts = self.counts()
            lines.append(
                f"  left out {len(self.skipped)}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
            )
            for cause in counts:
                items = sorted(
                    (s for s in self.skipped if s.cause == cause), key=lambda s: (s.index < 0, s.index)
                )
                ids = ", ".join(s.ident for s in items[:FIRST_IDS])
                lines.append(f"  {cause}: {ids}; e.g. {items[0]}")
        return "\n".join(lines)


# ------------------------------------------------------------------ one record


def _record_field(ds: Any, index: int, name: str) -> Any:
    records = getattr(ds, "records", None)
    return getattr(records[index], name, None) if records is not None else None


def _text_only(ds: Any, index: int) -> dict[str, Any] | SkippedSample:
    """The sample of record ``index`` without decoding its clip (its pixels are a placeholder)."""
    placeholder = tuple(torch.zeros((1, 3, 1, 1), dtype=torch.uint8) for _ in ds.streams)
    ds._read_video = lambda i: placeholder  # an instance attribute shadows the method for this call
    try:
        return ds[index]
    finally:
        del ds._read_video


def stored_item(ds: Any, index: int, spec: ShardSpec) -> dict[str, Any] | SkippedSample:
    """The stored item of record ``index`` of ``ds``, or the :class:`SkippedSample` of a bad clip."""
    path = Path(ds.video_path(index))
    video_id = str(_record_field(ds, index, "video_id") or "")
    found = file_problem(path)
    if found is not None:
        return SkippedSample(index=index, video_id=video_id, path=str(path), reason=found[1], cause=found[0])
    sample = ds[index] if spec.verify or spec.frames is not None else _text_only(ds, index)
    if not isinstance(sample, dict):
        return sample
    fields = {k: v for k, v in sample.items() if k not in NOT_STORED}
    clip: dict[str, Any] = {"source": str(path)}
    if spec.frames is not None:
        video: Any = sample["video"].numpy()
    elif path.is_dir():
        files = list_frames(path)
        first, last = _record_field(ds, index, "first_frame"), _record_field(ds, index, "last_frame")
        lo = 0 if first is None else max(int(first), 0)
        hi = len(files) if last is None else min(int(last), len(files))
        data = [f.read_bytes() for f in files[lo:hi]]
        video = b"".join(data)
        clip.update(kind="frames", sizes=[len(d) for d in data], names=[f.name for f in files[lo:hi]])
    else:
        video = path.read_bytes()
        clip["kind"] = "file"
        for key in ("start", "end"):
            value = _record_field(ds, index, key)
            if value is not None:
                clip[key] = float(value)
    fields[CLIP_KEY] = clip
    return {"video": video, "meta": json.dumps(fields, default=str)}


# ------------------------------------------------------------------ parts


def part_name(number: int) -> str:
    return f"part-{number:06d}"


def convert_part(ds: Any, spec: ShardSpec, number: int, parts_dir: Path) -> dict[str, Any]:
    """Write part ``number`` (records ``[number * part_size, ...)``) into ``parts_dir``; returns its summary.

    The part is written into a hidden folder that is renamed to its final name once complete, so a
    part folder with its final name is a finished part."""
    from litdata.processing.complete import complete_dataset
    from litdata.streaming.writer import BinaryWriter

    lo = number * spec.part_size
    hi = min(lo + spec.part_size, len(ds))
    final = parts_dir / part_name(number)
    tmp = parts_dir / f".{part_name(number)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = None
    samples = 0
    skipped: list[dict[str, Any]] = []
    for index in range(lo, hi):
        item = stored_item(ds, index, spec)
        if isinstance(item, SkippedSample):
            skipped.append(item._asdict())
            continue
        if writer is None:
            writer = BinaryWriter(str(tmp), chunk_bytes=spec.chunk_bytes)
        writer[samples] = item
        samples += 1
    if writer is not None:
        writer.done()
        complete_dataset(str(tmp))  # index.json of the part (without waiting for other writers)
    summary = {"part": number, "first": lo, "stop": hi, "samples": samples, "skipped": skipped}
    (tmp / PART_SUMMARY).write_text(json.dumps(summary))
    os.replace(tmp, final)
    return summary


#: The source dataset of the conversion running in this process (inherited by forked workers).
_SOURCE: dict[str, Any] = {}


def _worker_init() -> None:
    torch.set_num_threads(1)  # the workers share the cores


def _convert_in_worker(number: int, parts_dir: str) -> dict[str, Any]:
    return convert_part(_SOURCE["dataset"], _SOURCE["spec"], number, Path(parts_dir))


def merge_parts(
    parts_dir: Path, out: Path, numbers: Sequence[int]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Move the chunks of the parts (in part order) into ``out`` as one LitData dataset's chunks;
    returns the chunk entries of its ``index.json`` and its config (``None`` when no part has a chunk).

    Idempotent: a chunk already moved by an interrupted merge is found under its new name."""
    out.mkdir(parents=True, exist_ok=True)
    chunks: list[dict[str, Any]] = []
    config: dict[str, Any] | None = None
    for number in numbers:
        part = parts_dir / part_name(number)
        index_file = part / "index.json"
        if not index_file.is_file():
            continue  # a part whose records were all left out
        index = json.loads(index_file.read_text())
        if config is None:
            config = index["config"]
        elif index["config"].get("data_format") != config.get("data_format"):
            raise ShardsError(
                f"{part}: its records are stored as {index['config'].get('data_format')}, the earlier parts' as "
                f"{config.get('data_format')}; convert again with --overwrite"
            )
        for chunk in index["chunks"]:
            name = f"chunk-0-{len(chunks)}.bin"
            src, dst = part / chunk["filename"], out / name
            if src.exists():
                os.replace(src, dst)
            elif not dst.exists():
                raise ShardsError(
                    f"{src}: a chunk of a finished part is missing; convert again with --overwrite"
                )
            chunks.append({**chunk, "filename": name})
    return chunks, config


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _kind(ds: Any) -> str | None:
    kind = getattr(ds, "kind", None)
    if isinstance(kind, str):
        return kind
    records = getattr(ds, "records", None) or []
    if not records:
        return None
    return "multiple_choice" if any(getattr(r, "options", None) for r in records) else "open_ended"


def convert(
    spec: ShardSpec,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ConversionReport:
    """Convert ``spec``'s split into ``<out>/<split>/`` (module docstring), resuming an interrupted run.

    Args:
        spec: the source and how to store it.
        out: the shards' root folder (one subfolder per split).
        workers: processes converting parts at once (1: this process).
        overwrite: delete an earlier (finished or interrupted) conversion of this split first.
        progress: called with a line after each part.

    Returns:
        The :class:`ConversionReport`.

    Raises:
        ShardsError: an earlier conversion of this split in ``out`` used other arguments, or no record
            could be stored.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
        raise ShardsError(f"--workers must be a positive integer, got {workers!r}")
    started = time.perf_counter()
    root = Path(out).expanduser()
    location = root / spec.split
    parts_dir = root / PARTS_DIR / spec.split
    wanted = spec.as_json()
    if overwrite:
        shutil.rmtree(location, ignore_errors=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
    meta_file = location / SHARDS_META
    if (location / "index.json").is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        _check_same(meta.get("conversion"), wanted, location)
        return ConversionReport(
            spec.split, location, samples=meta["num_samples"], records=meta.get("num_records", 0),
            skipped=skipped_from_json(meta.get("skipped") or []), already_done=True,
        )  # fmt: skip
    parts_dir.mkdir(parents=True, exist_ok=True)
    spec_file = parts_dir / SPEC_FILE
    if spec_file.is_file():
        _check_same(json.loads(spec_file.read_text()), wanted, parts_dir)
    else:
        _write_json(spec_file, wanted)

    ds = spec.build()
    total = -(-len(ds) // spec.part_size)
    done = {n for n in range(total) if (parts_dir / part_name(n)).is_dir()}
    todo = [n for n in range(total) if n not in done]
    say = progress or (lambda line: None)
    if done:
        say(
            f"{spec.split}: {len(done)} of {total} parts were converted by an earlier run; converting the other {len(todo)}"
        )
    finished = len(done)
    if workers == 1 or len(todo) <= 1:
        for n in todo:
            convert_part(ds, spec, n, parts_dir)
            finished += 1
            say(f"{spec.split}: part {finished}/{total}")
    else:
        _SOURCE.update(dataset=ds, spec=spec)
        try:
            context = multiprocessing.get_context("fork")  # the workers inherit the built dataset
            with ProcessPoolExecutor(
                min(workers, len(todo)), mp_context=context, initializer=_worker_init
            ) as pool:
                for future in as_completed(
                    [pool.submit(_convert_in_worker, n, str(parts_dir)) for n in todo]
                ):
                    future.result()
                    finished += 1
                    say(f"{spec.split}: part {finished}/{total}")
        finally:
            _SOURCE.clear()

    summaries = [json.loads((parts_dir / part_name(n) / PART_SUMMARY).read_text()) for n in range(total)]
    chunks, config = merge_parts(parts_dir, location, range(total))
    samples = sum(s["samples"] for s in summaries)
    skipped = startup_skips(ds) + skipped_from_json([s for part in summaries for s in part["skipped"]])
    if config is None or not samples:
        raise ShardsError(
            f"{location}: no record of the {spec.split} split could be stored ({len(skipped)} left out, first: "
            f"{skipped[0] if skipped else 'none'})"
        )
    import litdata

    report = ConversionReport(
        spec.split, location, samples=samples, records=len(ds), chunks=len(chunks),
        bytes=sum(int(c.get("chunk_bytes", 0)) for c in chunks), skipped=skipped, parts=total,
        converted=len(todo), reused=len(done),
    )  # fmt: skip
    meta = {
        "format": SHARDS_FORMAT,
        "stored": spec.stored,
        "frames": spec.frames,
        "size": spec.size,
        "source": {"dataset": spec.dataset, "dataset_args": spec.dataset_args, "split": spec.split},
        "conversion": wanted,
        "num_samples": samples,
        "num_records": len(ds),
        "kind": _kind(ds),
        "answer_vocab": list(getattr(ds, "answer_vocab", []) or []),
        "families": list(getattr(ds, "families", []) or []),
        "breakdowns": dict(getattr(ds, "breakdowns", None) or {}),
        "protocol": dict(getattr(ds, "protocol", None) or {}),
        "skipped_counts": report.counts(),
        "skipped": [s._asdict() for s in skipped],
        "litdata": litdata.__version__,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(meta_file, meta)
    _write_json(location / "index.json", {"chunks": chunks, "config": config})  # last: the split is complete
    shutil.rmtree(parts_dir, ignore_errors=True)
    if parts_dir.parent.is_dir() and not any(parts_dir.parent.iterdir()):
        parts_dir.parent.rmdir()
    report.seconds = time.perf_counter() - started
    return report


def _check_same(found: dict[str, Any] | None, wanted: dict[str, Any], where: Path) -> None:
    if found is not None and found != wanted:
        differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        shown = ", ".join(f"{k}={found.get(k)!r} (now {wanted.get(k)!r})" for k in differ)
        raise ShardsError(
            f"{where}: an earlier conversion of this split used other arguments: {shown}; run it with the same "
            f"ones to resume it, or add --overwrite to convert again"
        )
