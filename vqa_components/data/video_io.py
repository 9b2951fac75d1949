"""Reading and writing video files with PyAV.

Decoded video is a tensor ``(t, 3, h, w)`` of RGB frames, float in ``[0, 1]`` or ``uint8``, upright:
a rotation in the file's display matrix (phone videos) is applied, so a clip filmed upright comes
back upright, with its height and width swapped for 90 degrees.

Which frames. ``indices(n, k)`` gives ``k`` positions in ``[0, n)`` for a clip of ``n`` frames; the
default, *uniform segment sampling*, cuts the clip into ``k`` equal segments and takes the centre of
each, ``p_i = floor((i + 0.5) * n / k)`` (positions repeat when the clip is shorter than ``k``). A
position is a moment on the clip's time line: the span from the first frame's timestamp to the end
of the last frame is cut into ``n`` equal slots and position ``p`` is the centre of slot ``p``::

    time(p) = t_first + (p + 0.5) * (t_end - t_first) / n

and the frame returned is the one shown at that moment: the last frame whose timestamp is not after
it. At a constant frame rate that is frame ``p`` itself (timestamps rounded by the container are
off by far less than the half frame this allows); at a variable frame rate the frames are evenly
spaced in time, not in count, so a burst of frames is not sampled more densely than the rest. With
``start``/``end`` the same holds for the frames inside the range. A file whose packets carry no
timestamps (or repeat one) falls back to the ``p``-th decoded frame.

How. One demux pass, which reads packets without decoding them, lists every frame's timestamp and
the keyframes (and keeps the packets, up to :data:`KEEP_PACKETS_BYTES`, so that decoding reads
nothing twice). The needed frames are then decoded in time order: when a keyframe lies between the
last decoded frame and the next needed one (and skips at least :data:`SEEK_MIN_SKIP` frames), the
reader seeks to the last keyframe before the needed frame; otherwise it decodes on, in one forward
pass that stops after the last needed frame. Short clips with one keyframe (most VideoQA clips) are
one forward pass; long clips with regular keyframes decode a group of pictures per needed frame.
Non-reference frames (most B-frames) that are not needed are skipped by the decoder. Should the
decoder disagree with what the demux pass found (a seek that lands late, a frame that never
decodes), the clip is read again in one forward pass that counts decoded frames. Frames are
converted to planar RGB by FFmpeg, on one thread unless asked (``threads``).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from torch import Tensor

log = logging.getLogger(__name__)

Size = int | tuple[int, int] | list[int] | None
PathLike = str | os.PathLike

# PyAV raises av.error.FFmpegError (InvalidDataError, ...) for bad media, OSError
# for I/O problems, and occasionally EOFError/IndexError on truncated files.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, EOFError, IndexError)

#: A seek is taken only when it skips at least this many frames (skipping fewer saves little, and a
#: seek flushes the decoder).
SEEK_MIN_SKIP = 4

_PREFIX = "cannot decode video "


class VideoDecodeError(RuntimeError):
    """A video file is missing, empty, corrupt or has no decodable frames.

    The message is ``cannot decode video <path>: <reason>``; a dataset adds the record and field to
    the reason. The error survives a DataLoader worker: torch re-raises a worker's exception in the
    main process by calling its class with one argument, the worker's traceback as text, from which
    the path and reason (with the record and field) are read back; the worker's traceback is kept as
    a note and in :attr:`worker_traceback`.

    Attributes:
        path: the file that failed.
        reason: what went wrong, in words.
        worker_traceback: the traceback of the DataLoader worker that raised it, if it came from one.
    """

    def __init__(self, path: PathLike, reason: str | None = None) -> None:
        self.worker_traceback: str | None = None
        if reason is None:  # one argument: a message (torch's re-raise of an error from a worker)
            text = str(path)
            path, reason = _parse_message(text)
            if _PREFIX not in text.partition("\n")[0]:
                self.worker_traceback = text
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{_PREFIX}{self.path}: {reason}" if self.path else reason)
        if self.worker_traceback is not None and hasattr(self, "add_note"):  # Python 3.11+
            self.add_note(self.worker_traceback.rstrip())

    def __reduce__(self):  # keep (path, reason) when pickled
        return (type(self), (self.path, self.reason))


def _parse_message(text: str) -> tuple[str, str]:
    """``(path, reason)`` of the last ``VideoDecodeError: cannot decode video <path>: <reason>`` line
    of ``text`` (a traceback, or the message itself); ``("", text)`` if there is none."""
    marker = f"{VideoDecodeError.__name__}: {_PREFIX}"
    at = text.rfind(marker)
    if at >= 0:
        line = text[at + len(marker) :].split("\n", 1)[0]
    elif text.startswith(_PREFIX):
        line = text[len(_PREFIX) :].split("\n", 1)[0]
    else:
        return "", text
    splits = [i for i in range(len(line)) if line.startswith(": ", i)]
    if not splits:
        return "", text
    # a path may itself hold ": "; the first split whose path exists wins, else the first split
    at = next((i for i in splits if Path(line[:i]).exists()), splits[0])
    return line[:at], line[at + 2 :]


def uniform_indices(num_available: int, num_frames: int) -> list[int]:
    """Centre frame of each of ``num_frames`` equal segments of ``num_available`` frames.

    >>> uniform_indices(10, 5)
    [1, 3, 5, 7, 9]
    >>> uniform_indices(2, 4)
    [0, 0, 1, 1]
    """
    if num_available <= 0:
        raise ValueError(f"num_available must be positive, got {num_available}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return [min(num_available - 1, int((i + 0.5) * num_available / num_frames)) for i in range(num_frames)]


def _as_hw(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return (size, size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size must be an int or a pair (h, w) of positive ints, got {size!r}")
    return (int(size[0]), int(size[1]))


def resize_frames(frames: Tensor, size: Size) -> Tensor:
    """Resize ``(t, 3, h, w)`` float frames to ``size`` (bilinear, antialiased); ``None`` keeps them."""
    hw = _as_hw(size)
    if hw is None or tuple(frames.shape[-2:]) == hw:
        return frames
    out = F.interpolate(frames, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


_local = threading.local()
_inherited: list[VideoReformatter] = []
_REFORMAT_THREADS = "threads=" in (VideoReformatter.reformat.__doc__ or "")  # PyAV 14+


def _rgb_planes(frame: av.VideoFrame, threads: int = 1) -> np.ndarray:
    """``(3, h, w)`` uint8 RGB of a decoded frame, turned upright by its display matrix's rotation;
    ``threads``: the converter's (1, or 0 for FFmpeg's choice: its default, a pool of slice threads
    whose hand-offs cost ten times the conversion of a small frame).

    The frame is converted to planar RGB (FFmpeg's ``gbrp``: the same values as packed ``rgb24``)
    and its planes copied as they are: converting to packed RGB and then moving the channels first
    took 14 times as long for 720p frames (the channel transpose alone cost a sixth of decoding).

    One ``VideoReformatter`` per thread is reused: ``frame.to_ndarray(format="rgb24")``
    builds a new colour converter for every frame, which made conversion ten times
    slower than decoding for small clips. The converter is also per process: FFmpeg's
    converter runs a thread pool that a forked process (a DataLoader worker) does not
    inherit, so using the parent's converter in a worker, or freeing it there, waits
    forever for those threads. A worker makes its own and keeps the inherited one alive.
    """
    pid = os.getpid()
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None or _local.pid != pid:
        if reformatter is not None:
            _inherited.append(reformatter)  # never freed in this process (see above)
        reformatter = _local.reformatter = VideoReformatter()
        _local.pid = pid
    if _REFORMAT_THREADS and threads == 1:
        planar = reformatter.reformat(frame, format="gbrp", threads=1)
    else:
        planar = reformatter.reformat(frame, format="gbrp")
    h, w = planar.height, planar.width
    rgb = np.empty((3, h, w), np.uint8)
    for channel, plane in zip((1, 2, 0), planar.planes):  # gbrp: G, B, R
        line = plane.line_size
        rgb[channel] = np.frombuffer(plane, np.uint8, count=h * line).reshape(h, line)[:, :w]
    # counter-clockwise degrees; 0 without a display matrix (and before PyAV 14, which does not read it)
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.rot90(rgb, turns, axes=(1, 2)) if turns else rgb


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


def _open_input(path: Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        container = av.open(str(path), mode="r")
    except _DECODE_ERRORS as exc:
        raise VideoDecodeError(path, f"not a readable video container ({type(exc).__name__}: {exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "the file has no video stream")
    return container


def _stream_offset(stream: av.video.stream.VideoStream) -> float:
    """Seconds of the stream's first timestamp (times below are relative to it)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _in_range(t: float | None, start: float | None, end: float | None) -> bool:
    if t is None:
        return True
    if start is not None and t < start - 1e-6:
        return False
    if end is not None and t >= end - 1e-6:
        return False
    return True


def _corrupt(path: Path, exc: BaseException) -> VideoDecodeError:
    return VideoDecodeError(path, f"corrupt video data ({type(exc).__name__}: {exc})")


# ------------------------------------------------------------ the demux pass


@dataclass
class _Timeline:
    """What one demux pass (no decoding) tells about the frames of a stream.

    Attributes:
        pts: timestamps of the frames in the range, ascending (stream time base), all distinct.
        end: end of the last of them (its timestamp plus its duration).
        keyframes: timestamps of the keyframes read, ascending (one at or before ``pts[0]``).
        scanned: timestamps of every frame read (also those outside the range), ascending.
        packets: the packets read, in decoding order, while they fit in :data:`KEEP_PACKETS_BYTES`
            (decoding then needs neither a second demux pass nor a seek of the container), else ``None``.
        keyframe_packet: index in ``packets`` of each keyframe, by timestamp.
    """

    pts: list[int]
    end: int
    keyframes: list[int]
    scanned: list[int]
    packets: list[av.Packet] | None
    keyframe_packet: dict[int, int]

    def shown_at(self, position: int) -> int:
        """Index in :attr:`pts` of the frame shown at the centre of slot ``position`` (module docstring)."""
        n, first = len(self.pts), self.pts[0]
        # time(p) = first + (p + 0.5) (end - first) / n, compared in integers scaled by 2 n
        moment = 2 * n * first + (2 * position + 1) * (self.end - first)
        return max(0, bisect_right(self.pts, moment, key=lambda t: 2 * n * t) - 1)

    def keyframe_before(self, i: int) -> int:
        """Timestamp of the last keyframe at or before frame ``pts[i]``."""
        return self.keyframes[bisect_right(self.keyframes, self.pts[i]) - 1]

    def frames_between(self, after: int | None, before: int) -> int:
        """How many frames read lie strictly between timestamps ``after`` (``None``: the start) and
        ``before``."""
        lo = 0 if after is None else bisect_right(self.scanned, after)
        return max(0, bisect_right(self.scanned, before - 1) - lo)


#: The demux pass keeps the packets it reads (compressed data) up to this many bytes, and decodes
#: from them; a larger file is decoded by seeking the container and reading its packets again.
KEEP_PACKETS_BYTES = 64 * 2**20


class _SeekFailed(Exception):
    """The container cannot seek (a raw stream, a pipe)."""


def _seek_to(container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: int) -> None:
    try:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
    except _DECODE_ERRORS as exc:
        raise _SeekFailed(str(exc)) from exc


def _scan(
    container: av.container.InputContainer, path: Path, start: float | None, end: float | None
) -> _Timeline | None:
    """Read every packet of the first video stream (without decoding) whose frame may lie in
    ``[start, end)``; ``None`` if the packets carry no usable timestamps or keyframe flags."""
    stream = container.streams.video[0]
    tb = stream.time_base
    if tb is None:
        return None
    offset = _stream_offset(stream)
    seconds = float(tb)
    ranged = start is not None or end is not None
    from_start = start is None or start <= 0
    while True:
        if not from_start:  # seek near the range (a long video read for a short range)
            try:
                _seek_to(container, stream, int((start + offset) / seconds))
            except _SeekFailed:
                return None
        scanned: list[int] = []
        keyframes: dict[int, int] = {}  # pts -> index of the packet
        inside: dict[int, int] = {}  # pts -> duration
        packets: list[av.Packet] | None = []
        size = 0
        try:
            for packet in container.demux(stream):
                bytes_ = packet.size
                if bytes_ == 0:  # the flush packet at the end
                    continue
                pts = packet.pts
                if pts is None:
                    return None
                if end is not None and packet.dts is not None and packet.dts * seconds - offset >= end - 1e-6:
                    break  # in decoding order: every later packet shows later (pts >= dts)
                if packet.is_keyframe:
                    keyframes[pts] = len(scanned)
                scanned.append(pts)
                if packets is not None:
                    size += bytes_
                    packets.append(packet)
                    if size > KEEP_PACKETS_BYTES:
                        packets = None
                if not ranged or _in_range(pts * seconds - offset, start, end):
                    inside[pts] = packet.duration or 0
        except _DECODE_ERRORS as exc:
            raise _corrupt(path, exc) from exc
        keys = sorted(keyframes)
        first = min(inside, default=None)
        if first is not None and not from_start and (not keys or keys[0] > first):
            from_start = True  # the seek landed after the range's first keyframe: read from the start
            try:
                _seek_to(container, stream, 0)
            except _SeekFailed:
                return None
            continue
        break
    if len(set(scanned)) != len(scanned):
        return None  # a repeated timestamp: frames cannot be told apart by time
    scanned.sort()
    if not inside:
        return _Timeline([], 0, keys, scanned, packets, keyframes)
    pts = sorted(inside)
    if not keys or keys[0] > pts[0]:
        return None
    last = pts[-1]
    duration = inside[last]
    if duration <= 0:  # no duration: up to the next frame read, else the typical step between frames
        later = scanned[bisect_right(scanned, last) :]
        steps = np.diff(pts) if len(pts) > 1 else np.array([1])
        duration = (later[0] - last) if later else max(1, int(np.median(steps)))
    return _Timeline(pts, last + duration, keys, scanned, packets, keyframes)


def _count(
    container: av.container.InputContainer, path: Path, start: float | None, end: float | None
) -> tuple[int, bool]:
    """Frames of the first video stream whose time lies in ``[start, end)``, and whether the packets
    have timestamps.

    Uses the container's frame count when no range is asked and the container
    knows it, else counts packets (no decoding); packets without a timestamp are
    decoded and their frames counted.
    """
    stream = container.streams.video[0]
    if start is None and end is None and stream.frames and stream.frames > 0:
        return int(stream.frames), True
    offset = _stream_offset(stream)
    tb = stream.time_base
    count = 0
    decoding = False
    try:
        for packet in container.demux(stream):
            decoding = decoding or packet.size > 0 and (packet.pts is None or tb is None)
            if decoding:  # no timestamps: decode to count (the empty packet at the end drains the decoder)
                for frame in packet.decode():
                    t = None if frame.time is None else frame.time - offset
                    count += _in_range(t, start, end)
            elif packet.size > 0 and _in_range(float(packet.pts * tb) - offset, start, end):
                count += 1
    except _DECODE_ERRORS as exc:
        raise _corrupt(path, exc) from exc
    return count, not decoding


def count_frames(path: PathLike) -> int:
    """Number of frames of the first video stream of ``path``.

    Raises:
        VideoDecodeError: the file is missing, empty, corrupt or has no video.
    """
    path = Path(path)
    container = _open_input(path)
    try:
        return _count(container, path, None, None)[0]
    finally:
        container.close()


# ------------------------------------------------------------------ decoding


def _decode_packets(
    codec: av.codec.context.CodecContext,
    packets: Iterable[av.Packet],
    targets: set[int] | None,
    time_base: Fraction,
) -> Iterator[av.VideoFrame]:
    """Decode ``packets`` and drain the decoder. With ``targets`` (timestamps of the needed frames),
    the decoder skips the non-reference frames (frames no other frame is predicted from, such as most
    B-frames) that are not needed: it never decodes them, and decodes every other frame as usual."""
    skipping = False
    try:
        for packet in packets:
            if targets is not None and (packet.pts not in targets) != skipping:
                skipping = not skipping
                codec.skip_frame = "NONREF" if skipping else "DEFAULT"
            if packet.size == 0:
                break  # the flush packet at the end of a demux: drain below
            yield from codec.decode(packet)
        if skipping:
            codec.skip_frame = "DEFAULT"
            skipping = False
        for frame in codec.decode(None):  # the frames the decoder still holds
            frame.time_base = time_base  # (drained frames come without it)
            yield frame
    finally:  # also when the caller stops early (a seek): the next pass must decode every frame it needs
        if skipping:
            codec.skip_frame = "DEFAULT"


def _frames_from(
    container: av.container.InputContainer, timeline: _Timeline, key: int, targets: set[int] | None = None
) -> Iterator[av.VideoFrame]:
    """Decoded frames from the keyframe at timestamp ``key`` on: from the packets the demux pass kept,
    else by seeking the container (which may land on another keyframe; the caller checks). ``targets``:
    see :func:`_decode_packets`."""
    stream = container.streams.video[0]
    codec = stream.codec_context
    if timeline.packets is None:
        _seek_to(container, stream, key)  # (which flushes the decoder)
        packets: Iterable[av.Packet] = container.demux(stream)
    else:
        codec.flush_buffers()
        packets = timeline.packets[timeline.keyframe_packet[key] :]
    yield from _decode_packets(codec, packets, targets, stream.time_base)


def _decode_at(
    container: av.container.InputContainer,
    path: Path,
    timeline: _Timeline,
    wanted: Sequence[int],
    seek: bool,
    threads: int = 1,
) -> dict[int, np.ndarray] | None:
    """The frames (``(3, h, w)`` uint8) at indices ``wanted`` of ``timeline.pts``, decoded in time
    order with a seek wherever a keyframe skips at least :data:`SEEK_MIN_SKIP` frames (``seek``);
    ``None`` if the decoder disagrees with the demux pass (the caller then counts frames instead)."""
    needed = sorted(set(wanted))
    index = {t: i for i, t in enumerate(timeline.pts)}
    # skipping frames is left to one decoding thread (frame threads take the setting late)
    targets = {timeline.pts[i] for i in needed} if threads == 1 else None
    kept: dict[int, np.ndarray] = {}
    last: int | None = None  # timestamp of the last frame decoded
    pos = 0
    frames: Iterator[av.VideoFrame] | None = None
    try:
        while pos < len(needed):
            target = needed[pos]
            key = timeline.keyframe_before(target)
            if frames is None or (
                seek and (last is None or key > last) and timeline.frames_between(last, key) >= SEEK_MIN_SKIP
            ):
                if frames is not None:
                    frames.close()
                frames = _frames_from(container, timeline, key, targets)
                landed = False
            for frame in frames:
                t = frame.pts
                if t is None or (not landed and t > timeline.pts[target]):
                    return None  # no timestamp, or the seek went past the needed frame
                landed = True
                i = index.get(t)
                if i is None:
                    if t < timeline.pts[0]:
                        continue  # a frame before the range
                    return None  # past the range with frames missing, or a time the demux pass did not see
                last = t
                if i > target:
                    return None  # the needed frame never came out of the decoder
                if i < target:
                    continue
                kept[i] = _rgb_planes(frame, threads)
                pos += 1
                if pos == len(needed):
                    break
                target = needed[pos]
                key = timeline.keyframe_before(target)
                if seek and key > last and timeline.frames_between(last, key) >= SEEK_MIN_SKIP:
                    break  # seek to the next needed frame's keyframe
            else:
                return None  # the stream ended first
    except _SeekFailed:
        return None
    except _DECODE_ERRORS as exc:
        raise _corrupt(path, exc) from exc
    finally:
        if frames is not None:
            frames.close()
    return kept


def _decode_indices(
    container: av.container.InputContainer,
    path: Path,
    wanted: Sequence[int],
    start: float | None,
    end: float | None,
    threads: int = 1,
) -> tuple[dict[int, np.ndarray], int]:
    """Decode once, counting frames, keeping those (``(3, h, w)`` uint8) at ``wanted`` counts (the
    reader for files without usable timestamps).

    Returns the kept frames and how many in-range frames were seen (which is
    smaller than expected only when the container over-reports its length).
    """
    stream = container.streams.video[0]
    offset = _stream_offset(stream)
    needed = sorted(set(wanted))
    last = needed[-1]
    kept: dict[int, np.ndarray] = {}
    seen = 0
    if start is not None and start > 0 and stream.time_base is not None:
        try:
            _seek_to(container, stream, int((start + offset) / stream.time_base))
        except _SeekFailed:
            pass  # decode from the start; frames before the range are skipped
    try:
        pos = 0
        for frame in container.decode(stream):
            t = None if frame.time is None else frame.time - offset
            if not _in_range(t, start, end):
                if end is not None and t is not None and t >= end:
                    break
                continue
            if pos < len(needed) and seen == needed[pos]:
                kept[seen] = _rgb_planes(frame, threads)
                pos += 1
            seen += 1
            if seen > last:
                break
    except _DECODE_ERRORS as exc:
        raise _corrupt(path, exc) from exc
    return kept, seen


def frame_positions(indices: Callable[[int, int], Sequence[int]], n: int, k: int) -> list[int]:
    """``indices(n, k)``, checked: ``k`` positions among ``n`` frames (``ValueError`` otherwise)."""
    out = [int(i) for i in indices(n, k)]
    if len(out) != k or any(not 0 <= i < n for i in out):
        raise ValueError(f"frame positions {out[:8]}... must be {k} indices in [0, {n})")
    return out


def _set_threads(stream: av.video.stream.VideoStream, threads: int) -> None:
    """Decode with ``threads`` FFmpeg threads (0: FFmpeg's choice, frame and slice threads). One is set
    explicitly: FFmpeg's default starts a pool of slice threads for every file opened, which took
    longer than decoding a whole 64-frame 64x64 clip."""
    stream.codec_context.thread_count = threads
    if threads != 1:
        stream.thread_type = "AUTO"


def _read_counting(
    path: Path,
    streams: Sequence[tuple[int, Size]],
    start: float | None,
    end: float | None,
    indices: Callable[[int, int], Sequence[int]],
    threads: int,
) -> tuple[list[list[int]], dict[int, np.ndarray]]:
    """Positions per stream and frames, identifying frames by their count in one forward pass (each
    pass opens the file anew: a raw stream cannot seek back)."""

    def opened() -> av.container.InputContainer:
        container = _open_input(path)
        _set_threads(container.streams.video[0], threads)
        return container

    with opened() as container:
        n, timed = _count(container, path, start, end)
    seek_start = start if timed else None  # a raw stream cannot seek (and its frames have no times)
    if n <= 0:
        where = "" if start is None and end is None else f" between {start}s and {end}s"
        raise VideoDecodeError(path, f"no video frames{where}")
    per_stream = [frame_positions(indices, n, k) for k, _ in streams]
    with opened() as container:
        needed = [i for ix in per_stream for i in ix]
        kept, seen = _decode_indices(container, path, needed, seek_start, end, threads)
    if len(kept) < len({i for ix in per_stream for i in ix}):
        # The container over-reported its length (or the data ends early): pick again
        # from the frames that really decode.
        if seen == 0:
            raise VideoDecodeError(path, "no frame could be decoded")
        log.debug("%s: container reports %d frames but %d decode; re-sampling", path, n, seen)
        per_stream = [frame_positions(indices, seen, k) for k, _ in streams]
        with opened() as container:
            needed = [i for ix in per_stream for i in ix]
            kept, _ = _decode_indices(container, path, needed, seek_start, end, threads)
    return per_stream, kept


def read_video_streams(
    path: PathLike,
    streams: Sequence[tuple[int, Size]],
    start: float | None = None,
    end: float | None = None,
    dtype: torch.dtype = torch.float32,
    indices: Callable[[int, int], Sequence[int]] = uniform_indices,
    *,
    seek: bool = True,
    threads: int = 1,
    data: bytes | None = None,
) -> tuple[Tensor, ...]:
    """Decode several samplings of one clip in a single pass.

    Args:
        path: video file (with ``data``: the file the bytes came from, named in errors).
        streams: ``(num_frames, size)`` per stream; ``size`` is an int (square),
            ``(h, w)`` or ``None`` (native resolution).
        start, end: optional time range in seconds (relative to the stream start);
            frames are chosen inside ``[start, end)``.
        dtype: ``torch.uint8`` returns pixels in ``[0, 255]`` (what datasets emit:
            4x less to move between processes); a float dtype returns ``[0, 1]``.
        indices: ``indices(num_available, num_frames)`` -> the frame positions of a stream
            (default :func:`uniform_indices`; the datasets' ``frame_sampling: random`` passes
            :func:`~vqa_components.data.clip_transforms.random_indices`). Positions are moments
            of the clip's time line (module docstring).
        seek: seek to a keyframe when that skips frames (default); ``False`` decodes in one forward
            pass from the start (or from the keyframe before ``start``). The frames are the same.
        threads: FFmpeg decoding threads (0: FFmpeg's choice). One by default: DataLoader workers
            already use the cores, and on the shared 2-core machine of docs/results/decoding.md
            frame threads made 720p slower, not faster. Unneeded frames are skipped on one thread only.
        data: the clip file's bytes, read from memory instead of ``path`` (the ``streaming`` dataset's
            shards); the frames are those the file gives.

    Returns:
        One tensor ``(num_frames, 3, h, w)`` per stream.

    Raises:
        VideoDecodeError: the file is missing, empty, corrupt, or has no frame
            in the range.
    """
    path = Path(path)
    if not streams:
        raise ValueError("streams must name at least one (num_frames, size)")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if data is not None:
        return _read_from_memory(data, path, streams, start, end, dtype, indices, seek, threads)
    sizes = [_as_hw(size) for _, size in streams]
    kept = None
    with _open_input(path) as container:
        timeline = _scan(container, path, start, end)
        if timeline is not None:
            if not timeline.pts:
                where = "" if start is None and end is None else f" between {start}s and {end}s"
                raise VideoDecodeError(path, f"no video frames{where}")
            n = len(timeline.pts)
            per_stream = [[timeline.shown_at(p) for p in frame_positions(indices, n, k)] for k, _ in streams]
            _set_threads(container.streams.video[0], threads)
            kept = _decode_at(container, path, timeline, [i for ix in per_stream for i in ix], seek, threads)
            if kept is None:
                log.debug("%s: the decoder disagrees with the demux pass; reading it counting frames", path)
    if kept is None:
        per_stream, kept = _read_counting(path, streams, start, end, indices, threads)

    return tuple(
        finish_frames(torch.from_numpy(np.stack([kept[i] for i in idx])), hw, dtype)
        for idx, hw in zip(per_stream, sizes)
    )


def finish_frames(frames: Tensor, hw: tuple[int, int] | None, dtype: torch.dtype) -> Tensor:
    """Decoded ``(t, 3, h, w)`` uint8 frames resized to ``hw`` (``None``: as they are), in ``dtype``
    (uint8 pixels, or a float dtype in ``[0, 1]``): the last step of every reader."""
    if hw is not None and tuple(frames.shape[-2:]) != hw:
        frames = resize_frames(frames.float().div_(255.0), hw)
        if dtype == torch.uint8:
            frames = frames.mul_(255.0).round_().to(torch.uint8)
    if frames.dtype == torch.uint8 and dtype != torch.uint8:
        frames = frames.to(dtype).div_(255.0)
    return frames.contiguous()


def _read_from_memory(
    data: bytes,
    path: Path,
    streams: Sequence[tuple[int, Size]],
    start: float | None,
    end: float | None,
    dtype: torch.dtype,
    indices: Callable[[int, int], Sequence[int]],
    seek: bool,
    threads: int,
) -> tuple[Tensor, ...]:
    """:func:`read_video_streams` of a clip file's bytes (``path``: where they came from, named in
    errors). FFmpeg reads them from memory; a clip it cannot probe there, or that needs the reader's
    counting fallback, is written to a temporary file and read as a file."""
    if not data:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    sizes = [_as_hw(size) for _, size in streams]
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except _DECODE_ERRORS:
        container = None
    if container is not None:
        with container:
            if not container.streams.video:
                raise VideoDecodeError(path, "the file has no video stream")
            timeline = _scan(container, path, start, end)
            if timeline is not None:
                if not timeline.pts:
                    where = "" if start is None and end is None else f" between {start}s and {end}s"
                    raise VideoDecodeError(path, f"no video frames{where}")
                per_stream = [
                    [timeline.shown_at(p) for p in frame_positions(indices, len(timeline.pts), k)]
                    for k, _ in streams
                ]
                _set_threads(container.streams.video[0], threads)
                kept = _decode_at(
                    container, path, timeline, [i for ix in per_stream for i in ix], seek, threads
                )
                if kept is not None:
                    return tuple(
                        finish_frames(torch.from_numpy(np.stack([kept[i] for i in idx])), hw, dtype)
                        for idx, hw in zip(per_stream, sizes)
                    )
    with tempfile.NamedTemporaryFile(suffix=path.suffix, prefix="vqa-clip-") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return read_video_streams(
                tmp.name, streams, start, end, dtype, indices, seek=seek, threads=threads
            )
        except VideoDecodeError as exc:
            raise VideoDecodeError(path, exc.reason) from exc


def read_video_frames(
    path: PathLike,
    num_frames: int,
    size: Size = None,
    start: float | None = None,
    end: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Decode ``num_frames`` uniformly spaced frames of ``path``.

    Args:
        path: video file (anything FFmpeg reads).
        num_frames: frames to return (indices repeat if the clip is shorter).
        size: resize to ``size`` (int: square; ``(h, w)``) with antialiased
            bilinear interpolation; ``None`` keeps the native resolution.
        start, end: optional time range in seconds.

    Returns:
        ``(num_frames, 3, h, w)`` float tensor in ``[0, 1]``.

    Raises:
        VideoDecodeError: missing, empty or corrupt file (message names it).
    """
    return read_video_streams(path, [(num_frames, size)], start=start, end=end, dtype=dtype)[0]


def write_video(
    path: PathLike,
    frames: np.ndarray,
    fps: float | Fraction = 16,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 1,
    cpu_independent: bool = True,
) -> Path:
    """Write ``frames`` (``(t, h, w, 3)`` uint8 RGB) as H.264 (libx264, yuv420p) MP4.

    The file is written to a temporary name in the same folder and moved into
    place with :func:`os.replace`, so an interrupted write never leaves a
    half-written ``path``. With ``threads=1`` and ``cpu_independent`` the output bytes are a
    pure function of the input and of the FFmpeg/x264 build: x264 otherwise picks some
    algorithms by the CPU's instruction sets, so two machines could write different bytes.

    Args:
        path: output file; its suffix picks the container (``.mp4``, ``.mkv``...).
        frames: ``(t, h, w, 3)`` uint8; ``h`` and ``w`` must be even (yuv420p
            stores colour at half resolution).
        fps: frames per second.
        crf: x264 constant rate factor (0 = lossless, 18 ~ visually lossless).
        preset: x264 speed preset.
        threads: encoder threads.
        cpu_independent: x264's ``cpu-independent`` option (same bytes on every CPU).

    Returns:
        The written path.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (t, h, w, 3), got {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("cannot write a video with no frames")
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs even width and height, got {w}x{h}")
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        fmt = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(path.suffix.lower())
        with av.open(tmp, mode="w", format=fmt) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            options = {"crf": str(crf), "preset": preset}
            if cpu_independent:
                options["x264-params"] = "cpu-independent=1"
            stream.options = options
            stream.codec_context.thread_count = threads
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
