"""``synthetic_vqa``: a procedural VideoQA benchmark that ships with the library.

On first use the generator writes real H.264 videos (PyAV, libx264) and
MSRVTT-QA-style annotation files (``video_id``, ``question``, ``answer``,
``question_type`` and a ``caption``) into a cache folder. Everything is a pure
function of the generation arguments and the seed: the same arguments give the
same pixels, questions and answers on every machine.

Four question families, each with four answers in exactly equal numbers per
split (sizes are multiples of 16), so a model that sees only the question
scores 25 % on every family (chance level):

==========  ===================================================  ==========================
family      what the clip shows                                  what it needs
==========  ===================================================  ==========================
spatial     a small framed square filled with a 1-2 pixel         resolution: below full
            texture (stripes, checks, dots, plain grey) shown    size the textures blur to
            for the middle half of the clip                      the same grey
motion      a ball crossing the frame (wrapping at the edges)    frame rate: with fewer
            at 2-3.5 px/frame left, right, up or down, with a    than ~12 frames the step
            randomly jittering distractor square                 between frames aliases
counting    a lamp that flashes 1-4 times (4-5 frames on,        counting over time: runs
            at least 6 frames off)                               of "on" frames in order
needle      a circle, a square and a triangle, one in each       frame selection: the
            third of the clip, each visible for only ~5 % of     answer fills 3 of 64
            it; the asked shape is the only object in one of     frames, which a few
            the four answer colours, the other two wear          evenly spaced frames
            distractor colours                                   mostly miss
==========  ===================================================  ==========================

Generator version 2 (2026-11-23) changed the needle family: in version 1 all three shapes wore
answer colours, so the answer needed the asked shape bound to its colour; no tiny model learned
that binding from scratch (docs/results/videodistill.md), so it measured nothing.

Generator version 3 (2026-11-29) changed only the encoding: x264's ``cpu-independent`` option, so
that the same arguments give the same bytes on every machine with the same PyAV build (version 2
let x264 pick algorithms by the CPU's instruction sets; two machines could differ in a few clips).

The folder holds ``videos/<video_id>.mp4``, ``train.json``, ``val.json``,
``test.json`` and ``manifest.json`` (the generation arguments and the sha256
of every file). On each use the manifest is checked against the files; a file
that is missing or whose bytes changed is generated again (only that file).
Generation holds an exclusive file lock so parallel processes (DDP ranks,
DataLoader workers) never write the same folder at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqa_components.data.annotations import QARecord, annotations_to_bytes
from vqa_components.data.dataset import (
    ExampleSpec,
    VideoQADataset,
    check_preprocessing,
    example_frame_side,
    normalize_streams,
)
from vqa_components.data.video_io import write_video
from vqa_components.registry import DATASETS

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes, so old caches are not reused.
GENERATOR_VERSION = 3
CACHE_ENV = "VQA_COMPONENTS_CACHE"
SPLITS = ("train", "val", "test")

FAMILY_ANSWERS: dict[str, tuple[str, ...]] = {
    "spatial": ("stripes", "checks", "dots", "plain"),
    "motion": ("left", "right", "up", "down"),
    "counting": ("one", "two", "three", "four"),
    "needle": ("red", "green", "blue", "yellow"),
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_ANSWERS)
#: The answer vocabulary of the full benchmark (16 answers, family by family).
SYNTHETIC_ANSWERS: tuple[str, ...] = tuple(a for f in FAMILIES for a in FAMILY_ANSWERS[f])
#: Accuracy of a question-only model, per family (every family has 4 balanced answers).
CHANCE_LEVEL: dict[str, float] = {f: 1.0 / len(a) for f, a in FAMILY_ANSWERS.items()}

_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 40),
}
_DISTRACTOR_COLORS = ((150, 60, 170), (60, 200, 200), (235, 140, 40), (200, 200, 200))
_DISTRACTOR_NAMES = ("purple", "cyan", "orange", "white")
_SHAPES = ("circle", "square", "triangle")

_QUESTIONS = {
    "spatial": ("what pattern fills the small framed square?", "which texture is inside the little square?"),
    "motion": ("which way does the ball move?", "in which direction is the ball moving?"),
    "counting": ("how many times does the lamp flash?", "how often does the light blink?"),
    "needle": ("what color is the {shape} that appears briefly?", "which color does the {shape} have?"),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything the generated files depend on."""

    seed: int = 0
    num_train: int = 2000
    num_val: int = 400
    num_test: int = 800
    clip_frames: int = 64
    clip_size: int = 64
    families: tuple[str, ...] = FAMILIES
    fps: int = 16

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILY_ANSWERS]
        if unknown or not self.families:
            raise ValueError(f"synthetic_vqa: unknown families {unknown}; choose from {list(FAMILIES)}")
        block = 4 * len(self.families)
        for split in SPLITS:
            n = self.size(split)
            if n <= 0 or n % block:
                raise ValueError(
                    f"synthetic_vqa: num_{split}={n} must be a positive multiple of {block} "
                    f"(4 answers x {len(self.families)} families) so that answers are balanced"
                )
        if self.clip_frames < 32:
            raise ValueError(f"synthetic_vqa: clip_frames must be at least 32, got {self.clip_frames}")
        if self.clip_size < 32 or self.clip_size % 2:
            raise ValueError(f"synthetic_vqa: clip_size must be an even number >= 32, got {self.clip_size}")

    def size(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def answers(self) -> list[str]:
        return [a for f in self.families for a in FAMILY_ANSWERS[f]]


# ------------------------------------------------------------------ drawing


class _Canvas:
    """``(t, s, s, 3)`` uint8 frames with a few drawing helpers."""

    def __init__(self, frames: int, size: int, background: tuple[int, int, int]) -> None:
        self.size = size
        self.frames = np.empty((frames, size, size, 3), dtype=np.uint8)
        self.frames[:] = np.asarray(background, dtype=np.uint8)
        yy, xx = np.mgrid[0:size, 0:size]
        self.yy, self.xx = yy, xx

    def rect(self, t: slice | int, y: int, x: int, h: int, w: int, color: Sequence[int]) -> None:
        self.frames[t, max(y, 0) : y + h, max(x, 0) : x + w] = color

    def disc(self, t: int, cy: float, cx: float, r: float, color: Sequence[int], wrap: bool = False) -> None:
        dy, dx = self.yy - cy, self.xx - cx
        if wrap:  # torus distance: the disc re-enters at the opposite edge
            s = self.size
            dy = (dy + s / 2) % s - s / 2
            dx = (dx + s / 2) % s - s / 2
        self.frames[t][dy * dy + dx * dx <= r * r] = color

    def shape(self, t: slice, kind: str, cy: int, cx: int, r: int, color: Sequence[int]) -> None:
        dy, dx = self.yy - cy, self.xx - cx
        if kind == "circle":
            inside = dy * dy + dx * dx <= r * r
        elif kind == "square":
            inside = (np.abs(dy) <= r - 1) & (np.abs(dx) <= r - 1)
        else:  # triangle, apex up
            inside = (dy >= -r) & (dy <= r) & (np.abs(dx) * 2 <= (dy + r))
        self.frames[t, inside] = color


def _texture(kind: str, size: int) -> np.ndarray:
    """``(size, size)`` uint8 luminance texture with a 1-2 pixel period."""
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        lum = np.where(yy % 2 == 0, 255, 0)
    elif kind == "checks":
        lum = np.where((yy + xx) % 2 == 0, 255, 0)
    elif kind == "dots":
        lum = np.where((yy % 3 == 1) & (xx % 3 == 1), 255, 0)
    else:  # plain: the mean of the stripes and checks, so blurring makes them alike
        lum = np.full((size, size), 128)
    return lum.astype(np.uint8)


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    g = int(rng.integers(40, 90))
    return (g + int(rng.integers(-10, 10)), g, g + int(rng.integers(-10, 10)))


def _distractors(canvas: _Canvas, rng: np.random.Generator, count: int, avoid: tuple[int, int, int, int] | None) -> None:
    """Static blobs in non-answer colours, for clutter."""
    s = canvas.size
    for _ in range(count):
        for _try in range(10):
            h, w = (int(v) for v in rng.integers(s // 16, s // 8, size=2))
            y, x = int(rng.integers(0, s - h)), int(rng.integers(0, s - w))
            if avoid is None or not _overlap((y, x, h, w), avoid):
                break
        canvas.rect(slice(None), y, x, h, w, _DISTRACTOR_COLORS[int(rng.integers(len(_DISTRACTOR_COLORS)))])


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 2) -> bool:
    ay, ax, ah, aw = a
    by, bx, bh, bw = b
    return not (ay + ah + margin <= by or by + bh + margin <= ay or ax + aw + margin <= bx or bx + bw + margin <= ax)


def _spatial(cfg: SyntheticConfig, rng: np.random.Generator, answer: str) -> tuple[np.ndarray, str, str]:
    s, t = cfg.clip_size, cfg.clip_frames
    canvas = _Canvas(t, s, _background(rng))
    side = s // 4 + 2  # 18 px at 64: framed square with a 1 px white border
    y, x = (int(v) for v in rng.integers(2, s - side - 2, size=2))
    _distractors(canvas, rng, 2, (y, x, side, side))
    on = slice(t // 4, t - t // 4)
    canvas.rect(on, y, x, side, side, (255, 255, 255))
    tex = _texture(answer, side - 2)
    canvas.frames[on, y + 1 : y + side - 1, x + 1 : x + side - 1] = tex[..., None]
    question = _QUESTIONS["spatial"][int(rng.integers(2))]
    caption = f"a small framed square with a {answer} texture appears in the middle of the clip"
    return canvas.frames, question, caption


_DIRECTIONS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}


def _motion(cfg: SyntheticConfig, rng: np.random.Generator, answer: str) -> tuple[np.ndarray, str, str]:
    s, t = cfg.clip_size, cfg.clip_frames
    canvas = _Canvas(t, s, _background(rng))
    _distractors(canvas, rng, 1, None)
    color_name = list(_COLORS)[int(rng.integers(len(_COLORS)))]
    dy, dx = _DIRECTIONS[answer]
    speed = float(rng.uniform(2.0, 3.5)) * s / 64
    cy, cx = (float(v) for v in rng.uniform(0, s, size=2))
    r = s / 12
    jy, jx = (int(v) for v in rng.integers(4, s - 12, size=2))
    for f in range(t):
        # distractor: a square that jitters without a consistent direction
        jy = int(np.clip(jy + rng.integers(-3, 4), 0, s - 8))
        jx = int(np.clip(jx + rng.integers(-3, 4), 0, s - 8))
        canvas.rect(f, jy, jx, s // 10, s // 10, _DISTRACTOR_COLORS[3])
        canvas.disc(f, (cy + dy * speed * f) % s, (cx + dx * speed * f) % s, r, _COLORS[color_name], wrap=True)
    question = _QUESTIONS["motion"][int(rng.integers(2))]
    caption = f"a {color_name} ball moves {answer} across a grey background"
    return canvas.frames, question, caption


def _counting(cfg: SyntheticConfig, rng: np.random.Generator, answer: str) -> tuple[np.ndarray, str, str]:
    s, t = cfg.clip_size, cfg.clip_frames
    canvas = _Canvas(t, s, _background(rng))
    n = FAMILY_ANSWERS["counting"].index(answer) + 1
    side = s // 5
    y, x = (int(v) for v in rng.integers(2, s - side - 2, size=2))
    _distractors(canvas, rng, 2, (y, x, side, side))
    canvas.rect(slice(None), y, x, side, side, (25, 25, 25))  # the lamp, off
    # n flashes of 4-5 frames (scaled to the clip length), separated by >= 6 off frames
    scale = t / 64
    lengths = [max(2, round(int(rng.integers(4, 6)) * scale)) for _ in range(n)]
    min_gap = max(3, round(6 * scale))
    slack = t - sum(lengths) - min_gap * (n + 1)
    cuts = np.sort(rng.integers(0, slack + 1, size=n + 1)) if slack > 0 else np.zeros(n + 1, dtype=int)
    extra = np.diff(np.concatenate([[0], cuts]))
    start = 0
    for i in range(n):
        start += min_gap + int(extra[i])
        canvas.rect(slice(start, start + lengths[i]), y, x, side, side, (255, 250, 200))
        start += lengths[i]
    question = _QUESTIONS["counting"][int(rng.integers(2))]
    caption = f"a lamp flashes {answer} time{'s' if n > 1 else ''}"
    return canvas.frames, question, caption


def _needle(cfg: SyntheticConfig, rng: np.random.Generator, answer: str) -> tuple[np.ndarray, str, str]:
    s, t = cfg.clip_size, cfg.clip_frames
    canvas = _Canvas(t, s, _background(rng))
    _distractors(canvas, rng, 1, None)
    asked = _SHAPES[int(rng.integers(len(_SHAPES)))]
    # only the asked shape wears an answer colour; the other two wear distractor colours
    others = [int(i) for i in rng.permutation(len(_DISTRACTOR_COLORS))]
    rgb = {asked: _COLORS[answer]}
    colors = {asked: answer}
    for shape in _SHAPES:
        if shape != asked:
            i = others.pop()
            rgb[shape], colors[shape] = _DISTRACTOR_COLORS[i], _DISTRACTOR_NAMES[i]
    # each shape is visible for ~5 % of the clip, in its own third of the clip
    length = max(2, round(t * 3 / 64))
    third = t // 3
    order = list(_SHAPES)
    rng.shuffle(order)
    r = s // 4  # 33 px wide at 64: covers about 2x2 cells of a 4x4 token grid
    for k, shape in enumerate(order):
        start = k * third + int(rng.integers(0, third - length + 1))
        cy, cx = (int(v) for v in rng.integers(r + 1, s - r - 1, size=2))
        canvas.shape(slice(start, start + length), shape, cy, cx, r, rgb[shape])
    question = _QUESTIONS["needle"][int(rng.integers(2))].format(shape=asked)
    caption = "briefly, " + ", then ".join(f"a {colors[sh]} {sh}" for sh in order) + " appear"
    return canvas.frames, question, caption


_GENERATORS = {"spatial": _spatial, "motion": _motion, "counting": _counting, "needle": _needle}


def _sample_plan(cfg: SyntheticConfig, split: str, index: int) -> tuple[str, str]:
    """Family and answer of sample ``index``: cycles so every (family, answer) is equally frequent."""
    fam = cfg.families[index % len(cfg.families)]
    answers = FAMILY_ANSWERS[fam]
    return fam, answers[(index // len(cfg.families)) % len(answers)]


def _rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS.index(split), index])


def video_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def generate_sample(cfg: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, QARecord]:
    """Frames ``(t, s, s, 3)`` uint8 and the annotation record of one sample (no I/O)."""
    family, answer = _sample_plan(cfg, split, index)
    frames, question, caption = _GENERATORS[family](cfg, _rng(cfg, split, index), answer)
    rec = QARecord(
        video_id=video_id(split, index),
        question=question,
        answer=answer,
        question_type=family,
        caption=caption,
        id=index,
    )
    return frames, rec


def _write_one(args: tuple[SyntheticConfig, str, int, str]) -> tuple[str, str, QARecord]:
    cfg, split, index, folder = args
    frames, rec = generate_sample(cfg, split, index)
    path = Path(folder) / f"{rec.video_id}.mp4"
    write_video(path, frames, fps=cfg.fps, threads=1)
    return rec.video_id, _sha256(path), rec


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ the cache


def default_root() -> Path:
    """``$VQA_COMPONENTS_CACHE/synthetic_vqa`` or ``~/.cache/vqa_components/synthetic_vqa``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "vqa_components") / "synthetic_vqa"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_generated(cfg: SyntheticConfig, root: str | os.PathLike | None = None, workers: int | None = None) -> Path:
    """Generate (or repair) the benchmark for ``cfg``; returns its folder.

    Checks every file against ``manifest.json``; generates what is missing or
    changed. Safe to call from several processes at once.
    """
    folder = Path(root) if root is not None else default_root()
    folder = folder / f"v{GENERATOR_VERSION}-{cfg.fingerprint()}"
    with _locked(folder):
        manifest_path = folder / "manifest.json"
        manifest: dict[str, Any] = {}
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except json.JSONDecodeError:
                log.warning("%s is corrupt; checking every file again", manifest_path)
        files: dict[str, str] = dict(manifest.get("files", {}))
        videos = folder / "videos"
        todo: list[tuple[SyntheticConfig, str, int, str]] = []
        fresh: dict[str, QARecord] = {}  # records of the clips generated now (no need to draw them again)
        for split in SPLITS:
            for i in range(cfg.size(split)):
                vid = video_id(split, i)
                rel = f"videos/{vid}.mp4"
                path = folder / rel
                if rel in files and path.is_file() and _sha256(path) == files[rel]:
                    continue
                if rel in files:
                    log.warning("synthetic_vqa: %s is missing or corrupt; generating it again", path)
                    files.pop(rel)
                todo.append((cfg, split, i, str(videos)))
        if todo:
            videos.mkdir(parents=True, exist_ok=True)
            n_workers = workers if workers is not None else min(len(todo) // 64 + 1, os.cpu_count() or 1, 8)
            log.warning("synthetic_vqa: generating %d clips into %s (once)", len(todo), folder)
            if n_workers > 1:
                with ProcessPoolExecutor(n_workers) as pool:
                    results = list(pool.map(_write_one, todo, chunksize=16))
            else:
                results = [_write_one(a) for a in todo]
            for vid, digest, rec in results:
                files[f"videos/{vid}.mp4"] = digest
                fresh[vid] = rec
        for split in SPLITS:
            rel = f"{split}.json"
            path = folder / rel
            if rel in files and path.is_file() and _sha256(path) == files[rel]:
                continue
            records = [
                fresh.get(video_id(split, i)) or generate_sample_record(cfg, split, i) for i in range(cfg.size(split))
            ]
            tmp = path.with_suffix(".json.tmp")
            tmp.write_bytes(annotations_to_bytes(records))
            os.replace(tmp, path)
            files[rel] = _sha256(path)
        if files != manifest.get("files"):
            new = {"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "files": files}
            tmp = manifest_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(new, indent=1, sort_keys=True))
            os.replace(tmp, manifest_path)
    return folder


def generate_sample_record(cfg: SyntheticConfig, split: str, index: int) -> QARecord:
    """The annotation record of one sample (draws the frames too: the question shares their RNG)."""
    return generate_sample(cfg, split, index)[1]


# ------------------------------------------------------------------ the dataset


@DATASETS.register("synthetic_vqa")
class SyntheticVQADataset(VideoQADataset):
    """The embedded procedural benchmark (see the module docstring for the families).

    Args:
        split: ``train``, ``val`` or ``test``.
        root: cache folder (default ``$VQA_COMPONENTS_CACHE/synthetic_vqa`` or
            ``~/.cache/vqa_components/synthetic_vqa``); one sub-folder per configuration.
        seed: generation seed.
        num_train, num_val, num_test: split sizes (multiples of ``4 x families``).
        clip_frames: frames per generated clip (16 fps).
        clip_size: side of the generated (square) frames, in pixels.
        families: question families to include (default: all four).
        num_frames, frame_size, streams, resize_short, crop_size, frame_sampling, training,
            on_bad_video, feature_cache, feature_cache_fingerprint: as in
            :class:`~vqa_components.data.dataset.VideoQADataset` (``frame_size=None`` keeps
            ``clip_size`` unless ``resize_short`` is set).
    """

    def __init__(
        self,
        split: str = "train",
        root: str | None = None,
        seed: int = 0,
        num_train: int = 2000,
        num_val: int = 400,
        num_test: int = 800,
        clip_frames: int = 64,
        clip_size: int = 64,
        families: list[str] | None = None,
        num_frames: int = 16,
        frame_size: int | None = None,
        streams: list[dict[str, int]] | None = None,
        resize_short: int | None = None,
        crop_size: int | None = None,
        frame_sampling: str = "uniform",
        training: bool | None = None,
        on_bad_video: str = "skip",
        feature_cache: str | None = None,
        feature_cache_fingerprint: str | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"synthetic_vqa: split must be one of {SPLITS}, got {split!r}")
        self.config = SyntheticConfig(
            seed=seed,
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
            clip_frames=clip_frames,
            clip_size=clip_size,
            families=tuple(families) if families else FAMILIES,
        )
        self.root = ensure_generated(self.config, root)
        super().__init__(
            annotation_file=str(self.root / f"{split}.json"),
            video_dir=str(self.root / "videos"),
            split=split,
            answer_vocab=self.config.answers,
            num_frames=num_frames,
            frame_size=frame_size or (None if resize_short is not None else clip_size),
            streams=streams,
            resize_short=resize_short,
            crop_size=crop_size,
            frame_sampling=frame_sampling,
            training=training,
            on_bad_video=on_bad_video,
            feature_cache=feature_cache,
            feature_cache_fingerprint=feature_cache_fingerprint,
        )
        self.families = list(self.config.families)

    @classmethod
    def example_spec(cls, **kwargs: Any) -> ExampleSpec:
        clip_size = kwargs.get("clip_size", 64)
        resize, crop = kwargs.get("resize_short"), kwargs.get("crop_size")
        frame_size = kwargs.get("frame_size") or (None if resize is not None else clip_size)
        streams = normalize_streams(kwargs.get("num_frames", 16), frame_size, kwargs.get("streams"))
        check_preprocessing(streams, resize, crop, kwargs.get("frame_sampling", "uniform"))
        fams = tuple(kwargs.get("families") or FAMILIES)
        sides = [example_frame_side(s, resize, crop, clip_size) for _, s in streams]
        return ExampleSpec(
            video_shapes=[(t, side, side) for (t, _), side in zip(streams, sides)],
            multi_stream=kwargs.get("streams") is not None,
            questions=[_QUESTIONS[f][0].format(shape="circle") for f in fams],
            answers=[a for f in fams for a in FAMILY_ANSWERS[f]],
            families=list(fams),
        )
