"""Reading and writing video files with PyAV.

Decoded video is always a float tensor ``(t, 3, h, w)`` with values in ``[0, 1]``
(RGB). Frames are chosen by *uniform segment sampling*: a clip of ``n`` frames
is cut into ``num_frames`` equal segments and the frame at the centre of each
segment is taken, ``index_i = floor((i + 0.5) * n / num_frames)``. When the clip
is shorter than ``num_frames`` indices repeat (still uniformly spaced).

Decoding is one forward pass that stops after the last needed frame: for the
short clips of video QA this is faster than seeking to each frame.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
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


class VideoDecodeError(RuntimeError):
    """A video file is missing, empty, corrupt or has no decodable frames.

    Attributes:
        path: the file that failed.
        reason: what went wrong, in words.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when pickled across DataLoader workers
        return (type(self), (self.path, self.reason))


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


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB of a decoded frame.

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
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


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


def _count(
    container: av.container.InputContainer, path: Path, start: float | None, end: float | None
) -> tuple[int, bool]:
    """Frames of the first video stream whose time lies in ``[start, end)``.

    Uses the container's frame count when no range is asked and the container
    knows it, else counts packets (no decoding), else decodes. Returns the count
    and whether the container was read (and must be rewound before decoding).
    """
    stream = container.streams.video[0]
    if start is None and end is None and stream.frames and stream.frames > 0:
        return int(stream.frames), False
    offset = _stream_offset(stream)
    tb = stream.time_base
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # flush packet
                continue
            if packet.pts is None or tb is None:
                count = -1
                break
            if _in_range(float(packet.pts * tb) - offset, start, end):
                count += 1
        if count < 0:  # no timestamps: decode to count
            container.seek(0)
            count = 0
            for frame in container.decode(stream):
                t = None if frame.time is None else frame.time - offset
                if _in_range(t, start, end):
                    count += 1
    except _DECODE_ERRORS as exc:
        raise VideoDecodeError(path, f"corrupt video data ({type(exc).__name__}: {exc})") from exc
    return count, True


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


def _decode_indices(
    container: av.container.InputContainer,
    path: Path,
    wanted: Sequence[int],
    start: float | None,
    end: float | None,
) -> tuple[dict[int, np.ndarray], int]:
    """Decode once, keeping the frames (``(h, w, 3)`` uint8) at ``wanted`` indices.

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
        target = int((start + offset) / stream.time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)
    try:
        pos = 0
        for frame in container.decode(stream):
            t = None if frame.time is None else frame.time - offset
            if not _in_range(t, start, end):
                if end is not None and t is not None and t >= end:
                    break
                continue
            if pos < len(needed) and seen == needed[pos]:
                kept[seen] = _to_rgb(frame)
                pos += 1
            seen += 1
            if seen > last:
                break
    except _DECODE_ERRORS as exc:
        raise VideoDecodeError(path, f"corrupt video data ({type(exc).__name__}: {exc})") from exc
    return kept, seen


def _positions(indices: Callable[[int, int], Sequence[int]], n: int, k: int) -> list[int]:
    out = [int(i) for i in indices(n, k)]
    if len(out) != k or any(not 0 <= i < n for i in out):
        raise ValueError(f"frame positions {out[:8]}... must be {k} indices in [0, {n})")
    return out


def read_video_streams(
    path: PathLike,
    streams: Sequence[tuple[int, Size]],
    start: float | None = None,
    end: float | None = None,
    dtype: torch.dtype = torch.float32,
    indices: Callable[[int, int], Sequence[int]] = uniform_indices,
) -> tuple[Tensor, ...]:
    """Decode several samplings of one clip in a single pass.

    Args:
        path: video file.
        streams: ``(num_frames, size)`` per stream; ``size`` is an int (square),
            ``(h, w)`` or ``None`` (native resolution).
        start, end: optional time range in seconds (relative to the stream start);
            frames are chosen inside ``[start, end)``.
        dtype: ``torch.uint8`` returns pixels in ``[0, 255]`` (what datasets emit:
            4x less to move between processes); a float dtype returns ``[0, 1]``.
        indices: ``indices(num_available, num_frames)`` -> the frame positions of a stream
            (default :func:`uniform_indices`; the datasets' ``frame_sampling: random`` passes
            :func:`~vqa_components.data.clip_transforms.random_indices`).

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
    sizes = [_as_hw(size) for _, size in streams]
    container = _open_input(path)
    try:
        n, was_read = _count(container, path, start, end)
        if n <= 0:
            where = "" if start is None and end is None else f" between {start}s and {end}s"
            raise VideoDecodeError(path, f"no video frames{where}")
        if was_read:
            container.seek(0)  # rewind before decoding
        per_stream = [_positions(indices, n, k) for k, _ in streams]
        kept, seen = _decode_indices(container, path, [i for ix in per_stream for i in ix], start, end)
        if len(kept) < len({i for ix in per_stream for i in ix}):
            # The container over-reported its length (or the data ends early): pick again
            # from the frames that really decode.
            if seen == 0:
                raise VideoDecodeError(path, "no frame could be decoded")
            log.debug("%s: container reports %d frames but %d decode; re-sampling", path, n, seen)
            container.seek(0)
            per_stream = [_positions(indices, seen, k) for k, _ in streams]
            kept, _ = _decode_indices(container, path, [i for ix in per_stream for i in ix], start, end)
    finally:
        container.close()

    out = []
    for idx, hw in zip(per_stream, sizes):
        arr = np.stack([kept[i] for i in idx])  # (t, h, w, 3) uint8
        frames = torch.from_numpy(arr).permute(0, 3, 1, 2)
        if hw is not None and tuple(frames.shape[-2:]) != hw:
            frames = resize_frames(frames.float().div_(255.0), hw)
            if dtype == torch.uint8:
                frames = frames.mul_(255.0).round_().to(torch.uint8)
        if dtype != torch.uint8 and frames.dtype == torch.uint8:
            frames = frames.to(dtype).div_(255.0)
        out.append(frames.contiguous())
    return tuple(out)


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
