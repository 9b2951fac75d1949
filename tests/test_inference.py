"""Answers for your own video (``vqa ask``, ``vqa_components.inference``): a benchmark clip asked
through the model folder gets the answer the run's own prediction gave it; MP4, GIF and a frame
folder are read; many pairs at once; multiple choice and generated answers; one line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_DATA
from helpers import ROOT, run_vqa
from test_model_folder import GENERATING, MULTIPLE_CHOICE, build

from vqa_components.inference import Answerer, read_pairs
from vqa_components.model_folder import export

QUICKSTART = "recipes/quickstart.yaml"


def vqa(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The ``vqa`` command in a process of its own, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vqa_components.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env, check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The quickstart recipe on the tiny benchmark, trained one epoch, predicted and exported through
    the commands users run: ``(model folder, run folder, test clips by video_id)``."""
    root = tmp_path_factory.mktemp("quickstart")
    run = ["--config", QUICKSTART, *TINY_DATA, f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
    assert run_vqa("fit", *run, "--trainer.max_epochs=1")[0] == 0
    assert run_vqa("predict", *run, "--ckpt_path=best")[0] == 0
    assert run_vqa("export", *run, "--ckpt_path=best", f"--out={root / 'model'}")[0] == 0
    from vqa_components.cli import NO_INIT, release, run_cli

    cli = run_cli([*run, *NO_INIT], run=False)
    dm = cli.datamodule
    release(cli)
    dm.setup("test")
    test = dm.dataset("test")
    clips = {test.records[i].video_id: test.video_path(i) for i in range(len(test))}
    return root / "model", root, clips


def test_vqa_ask_answers_a_benchmark_clip_as_the_runs_prediction_did(trained):
    folder, root, clips = trained
    predictions = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len(clips) == 16
    first = predictions[0]
    done = vqa("ask", "--model", folder, "--video", clips[first["video_id"]], "--question", first["question"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"answer: {first['prediction']}"
    top = [line.split() for line in lines[1:]]
    assert len(top) == 5 and top[0][1] == first["prediction"]  # "1. ANSWER  PP.PP %"
    probabilities = [float(row[-2]) for row in top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.01

    # every test clip, many at once: the answers of the run's `vqa predict`, in order
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"video": str(clips[p["video_id"]]), "question": p["question"]}) + "\n"
                             for p in predictions))
    done = vqa("ask", "--model", folder, "--input", pairs, "--output", root / "answers.jsonl")
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in (root / "answers.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers] == [p["prediction"] for p in predictions]
    assert all(len(a["top"]) == 5 and a["top"][0][0] == a["answer"] for a in answers)


def test_a_frame_folder_and_a_gif_of_the_clip_are_read_like_the_clip(trained, tmp_path):
    from PIL import Image

    from vqa_components.data.video_io import count_frames, read_video_frames

    folder, _, clips = trained
    clip = next(iter(clips.values()))
    frames = read_video_frames(clip, count_frames(clip), dtype=torch.uint8)  # every frame, (t, 3, h, w)
    pictures = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    (tmp_path / "frames").mkdir()
    for i, picture in enumerate(pictures, start=1):
        picture.save(tmp_path / "frames" / f"img_{i:05d}.png")
    pictures[0].save(tmp_path / "clip.gif", save_all=True, append_images=pictures[1:], duration=40, loop=0)

    answerer = Answerer(folder)
    question = "which way does the ball move?"
    from_mp4 = answerer.read_video(clip)
    from_folder = answerer.read_video(tmp_path / "frames")
    assert torch.equal(from_folder, from_mp4)  # PNG is lossless: the same frames, chosen alike
    assert answerer.ask(tmp_path / "frames", question) == answerer.ask(clip, question)
    from_gif = answerer.read_video(tmp_path / "clip.gif")  # a 256-colour palette: close, not equal
    assert from_gif.shape == from_mp4.shape and from_gif.dtype == torch.uint8
    assert (from_gif.float() - from_mp4.float()).abs().mean() < 12
    done = vqa("ask", "--model", folder, "--video", tmp_path / "clip.gif", "--question", question)
    assert done.returncode == 0 and done.stdout.startswith("answer: "), done.stderr


def test_bad_input_is_one_line_naming_it(trained, tmp_path):
    folder, _, _ = trained
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for video in (tmp_path / "missing.mp4", broken):
        done = vqa("ask", "--model", folder, "--video", video, "--question", "what?")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith("vqa: error: ") and str(video) in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = vqa("ask", "--model", tmp_path, "--video", broken, "--question", "what?")
    assert done.returncode == 2 and "is not a model folder (no config.yaml" in done.stderr
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"video": "a.mp4", "question": "what?"}\n{"video": "b.mp4"}\n')
    done = vqa("ask", "--model", folder, "--input", pairs)
    assert done.returncode == 2 and f"{pairs}, line 2: field 'question' is missing" in done.stderr


def test_multiple_choice_takes_options_and_a_generating_head_prints_its_text(tmp_path):
    model, dm, config = build(*MULTIPLE_CHOICE)
    folder = export(model, config, tmp_path / "choice")
    clip = dm.dataset("test").video_path(0)
    options = ["left", "right", "up"]
    answerer = Answerer(folder)
    expected = answerer.ask(clip, "which way does the ball move?", options)
    assert expected["answer"] in options and sorted(o for o, _ in expected["top"]) == sorted(options)
    assert sum(p for _, p in expected["top"]) == pytest.approx(1.0)  # a softmax over the options
    code, out = run_vqa("ask", "--model", folder, "--video", clip, "--question", "which way does the ball move?",
                        "--options", *options)
    assert code == 0 and out.splitlines()[0] == f"answer: {expected['answer']}"
    with pytest.raises(Exception, match="give them"):
        answerer.ask(clip, "which way does the ball move?")

    model, dm, config = build(*GENERATING)
    folder = export(model, config, tmp_path / "generate")
    clip = dm.dataset("test").video_path(0)
    batch = Answerer(folder).batch([Answerer(folder).read_video(clip)], ["what color is the ball?"])
    with torch.no_grad():
        text = model.answer(batch)[0]["answer"]
    code, out = run_vqa("ask", "--model", folder, "--video", clip, "--question", "what color is the ball?")
    assert code == 0 and out.splitlines() == [f"answer: {text}"]  # no top 5: the answer is generated text


def test_explain_draws_the_figure_for_the_asked_clip(trained, tmp_path):
    folder, _, clips = trained
    out = tmp_path / "explain.png"
    code, printed = run_vqa("ask", "--model", folder, "--video", next(iter(clips.values())),
                            "--question", "which way does the ball move?", "--explain", out)
    assert code == 0 and f"figure written to {out}" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairs_files_resolve_videos_next_to_them(tmp_path):
    (tmp_path / "clips").mkdir()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"video": "clips/a.mp4", "question": "q?", "options": ["x", "y"]}\n\n'
                     f'{{"video": "{tmp_path / "b.mp4"}", "question": "r?"}}\n')
    rows = read_pairs(pairs)
    assert [r["video"] for r in rows] == [str(tmp_path / "clips" / "a.mp4"), str(tmp_path / "b.mp4")]
    assert rows[0]["options"] == ["x", "y"]
    pairs.write_text('{"video": "a.mp4", "question": "q?", "options": "x"}\n')
    with pytest.raises(Exception, match="line 1: field 'options' must be a list of strings"):
        read_pairs(pairs)
