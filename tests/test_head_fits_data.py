"""A head or an objective that cannot use the recipe's data stops ``vqa`` at start-up
(``VideoQAModel.setup``) with one line that names what to use instead: a classifier on
multiple-choice questions (it would learn the right option's position and never see the options), a
multiple-choice head under ``answer_cross_entropy`` on open-ended questions, ``answer_cross_entropy``
on a caption corpus (no ``answer_idx``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_vqa

from vqa_components.data.video_io import write_video

D = 32
CLASSIFIER = {"name": "answer_classifier", "in_dim": D, "num_answers": 3}
CHOICE = {"name": "vtm_choice", "in_dim": D}
CROSS_ENTROPY = [{"name": "answer_cross_entropy"}]


def clip(path: Path, level: int) -> None:
    write_video(path, np.full((4, 32, 32, 3), level, dtype=np.uint8), fps=4)


def run(tmp_path: Path, head: dict, objectives: list, data: dict, *extra: str,
        subcommand: str = "fit") -> tuple[int, list[str]]:
    """``vqa SUBCOMMAND`` on a 32-wide model and ``data``, one fast_dev_run step: (exit status, error lines)."""
    model = {
        "backbone": {"name": "frame_cnn", "dim": D, "channels": [8, 16, 32], "grid": 2},
        "text_encoder": {"name": "small_transformer", "dim": D, "num_layers": 1, "num_heads": 2},
        "fusion": {"name": "cross_attention", "video_dim": D, "text_dim": D, "dim": D, "num_layers": 1,
                   "num_heads": 2},
        "head": head,
        "objectives": objectives,
    }
    cfg = {"seed_everything": 0, "trainer": {"accelerator": "cpu", "default_root_dir": str(tmp_path / "run"),
                       "enable_progress_bar": False, "enable_model_summary": False},
           "model": model, "data": {"batch_size": 2, "num_workers": 0, **data}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    return run_vqa(subcommand, "--config", recipe, "--trainer.fast_dev_run=1", *extra)[0]


def errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith("vqa: error:")]


@pytest.fixture
def choices(tmp_path) -> dict:
    """videoqa_json whose questions have options (a miniature multiple-choice dataset)."""
    videos = tmp_path / "videos"
    for i in range(2):
        clip(videos / f"v{i}.mp4", 40 + 100 * i)
    records = [{"video_id": f"v{i % 2}", "question": "what happens?", "options": ["a ball", "a lamp", "a dog"],
                "answer": ["a ball", "a lamp", "a dog"][i % 3], "question_type": "what"} for i in range(4)]
    (tmp_path / "mc.json").write_text(json.dumps(records))
    args = {"annotation_file": str(tmp_path / "mc.json"), "video_dir": str(videos), "num_frames": 2}
    return {"dataset": "videoqa_json", "dataset_args": args}


def test_a_classifier_on_multiple_choice_questions_stops_at_start_up_naming_vtm_choice(tmp_path, choices, capsys):
    assert run(tmp_path, CLASSIFIER, CROSS_ENTROPY, choices) == 2
    lines = errors(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("vqa: error: head answer_classifier scores a fixed answer vocabulary, but dataset "
                               "videoqa_json is multiple choice")
    assert "never see the options" in lines[0] and "vtm_choice" in lines[0]
    # the head that fits the data trains on it
    assert run(tmp_path, CHOICE, CROSS_ENTROPY, choices) == 0, capsys.readouterr().err[-3000:]


def test_a_classifier_on_msrvtt_mc_stops_vqa_test(tmp_path, capsys):
    root = tmp_path / "msrvtt"
    clip(root / "videos" / "all" / "video7010.mp4", 40)
    options = ["a man cooks", "a dog runs", "people dance", "a car drives", "a cat sleeps"]
    (root / "msrvtt_mc_test.jsonl").write_text(json.dumps({"qid": 0, "clip_name": "video7010", "answer": 1,
                                                           "options": options}) + "\n")
    data = {"dataset": "msrvtt_mc", "dataset_args": {"root": str(root), "num_frames": 2},
            "train_split": None, "val_split": None}
    assert run(tmp_path, CLASSIFIER, CROSS_ENTROPY, data, subcommand="test") == 2
    lines = errors(capsys)
    assert len(lines) == 1 and "head answer_classifier" in lines[0] and "dataset msrvtt_mc is multiple choice" in lines[0]
    assert "vtm_choice" in lines[0]


def test_a_multiple_choice_head_under_answer_cross_entropy_on_open_ended_questions_names_the_classifier(
        tmp_path, tiny_data, capsys):
    assert run(tmp_path, CHOICE, CROSS_ENTROPY, {"dataset": "synthetic_vqa"}, *tiny_data) == 2
    lines = errors(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("vqa: error: head vtm_choice scores the options of multiple-choice questions, but "
                               "dataset synthetic_vqa has none")
    assert "name: answer_classifier" in lines[0]


def test_answer_cross_entropy_on_a_caption_corpus_names_the_field_and_the_datasets_that_give_it(tmp_path, capsys):
    root = tmp_path / "captions"
    for i in range(2):
        clip(root / "videos" / f"c{i}.mp4", 40 + 100 * i)
    (root / "train.jsonl").write_text("".join(json.dumps({"video": f"c{i}.mp4", "text": f"a clip number {i}"}) + "\n"
                                              for i in range(2)))
    data = {"dataset": "video_text_jsonl", "dataset_args": {"root": str(root), "num_frames": 2},
            "val_split": None, "test_split": None}
    assert run(tmp_path, CLASSIFIER, CROSS_ENTROPY, data, "--model.text_field=caption") == 2
    lines = errors(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("vqa: error: objective answer_cross_entropy needs each sample's answer_idx")
    assert "synthetic_vqa" in lines[0] and "msrvtt_qa" in lines[0] and "dataset video_text_jsonl has no answers" in lines[0]
    assert "KeyError" not in lines[0]
