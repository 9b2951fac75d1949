"""Bad input, nothing lost (issue 8): a release with 5 % corrupt or missing videos trains to completion
and reports exactly those ids, per cause, at the end of the epoch and in test_metrics.json; in strict
mode (on_bad_video: raise) the same release fails naming the first bad clip; malformed records left
out at start-up (on_bad_record: skip) are in the report with their causes."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import yaml
from helpers import run_vqa

ANSWERS = ["man", "dog", "car", "cat"]


def records(video_ids, first_id=0):
    return [
        {"answer": ANSWERS[n % 4], "category_id": 1, "id": first_id + i, "question": f"what is in clip {n}?", "video_id": n}
        for i, n in enumerate(video_ids)
    ]


@pytest.fixture
def release(tmp_path, mini):
    """MSRVTT-QA, original layout: 40 training questions on clips 0-39, of which clip 7 is missing and
    clip 23 is corrupt (2 of 40: 5 %); 20 test questions on clips 40-59, clip 45 missing, clip 52 empty."""
    root = tmp_path / "msrvtt_qa"
    mini.write_json(root / "train_qa.json", records(range(40)))
    mini.write_json(root / "val_qa.json", records(range(4), first_id=100))
    mini.write_json(root / "test_qa.json", records(range(40, 60), first_id=200))
    for n in range(60):
        if n not in (7, 45):
            mini.mp4(root / "video" / f"video{n}.mp4", level=4 * n, frames=4)
    (root / "video" / "video23.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    (root / "video" / "video52.mp4").write_bytes(b"")
    return root


def vqa(subcommand, cfg, tmp_path, *extra):
    """``vqa <subcommand>`` on ``cfg`` written as a recipe, in this process."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_vqa(subcommand, "--config", path, *extra)


def config(release, tmp_path, mini, **dataset_args):
    cfg = mini.recipe("msrvtt_qa", {"root": str(release), **dataset_args}, "open_ended", tmp_path / "run",
                      num_answers=4, batch_size=8)  # fmt: skip
    cfg["trainer"].update(max_epochs=1, num_sanity_val_steps=0)
    return cfg


def test_training_completes_and_reports_exactly_the_bad_clips(release, tmp_path, mini, caplog):
    cfg = config(release, tmp_path, mini)
    with caplog.at_level(logging.WARNING, logger="vqa_components.data.admission"):
        code, _ = vqa("fit", cfg, tmp_path)
    assert code == 0
    report = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train epoch")]
    assert report == [
        "train epoch: left out 2 sample(s): missing_video 1, undecodable_video 1\n"
        f"  missing_video: video7; e.g. {release / 'video' / 'video7.mp4'} (record 7, video_id='video7'): file not found\n"
        f"  undecodable_video: video23; e.g. {release / 'video' / 'video23.mp4'} (record 23, video_id='video23'): "
        + report[0].split("(record 23, video_id='video23'): ", 1)[1]
    ]
    assert "val epoch" not in caplog.text  # the validation clips are all readable
    rows = list(csv.DictReader(next((tmp_path / "run" / "logs").rglob("metrics.csv")).open()))
    logged = {k: float(v) for r in rows for k, v in r.items() if k.startswith("train/skipped") and v}
    assert logged == {"train/skipped_videos": 2.0, "train/skipped_missing_video": 1.0, "train/skipped_undecodable_video": 1.0}

    code, out = vqa("test", cfg, tmp_path, "--ckpt_path", "last")
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/num_samples"] == 18 and metrics["test/skipped_videos"] == 2
    assert metrics["test/skipped_missing_video"] == 1 and metrics["test/skipped_empty_video"] == 1
    skipped = metrics["skipped"]
    assert {c: (s["count"], s["first_ids"]) for c, s in skipped.items()} == {
        "missing_video": (1, ["video45"]), "empty_video": (1, ["video52"])}  # fmt: skip
    assert skipped["empty_video"]["first"].endswith("(record 12, video_id='video52'): file is empty (0 bytes)")
    assert metrics["protocol"]["num_questions"] == 20 and metrics["protocol"]["answer_vocab_size"] == 4
    assert "test epoch: left out 2 sample(s): missing_video 1, empty_video 1" in out


def test_strict_mode_fails_naming_the_first_bad_clip(release, tmp_path, mini, capsys):
    cfg = config(release, tmp_path, mini, on_bad_video="raise")
    code, _ = vqa("fit", cfg, tmp_path)
    err = capsys.readouterr().err
    assert code == 1
    assert f"vqa: error: cannot decode video {release / 'video' / 'video7.mp4'}: file not found (record 7 of " in err
    assert "train_qa.json, video_id='video7', id='7'" in err
    # with the missing clip back, the corrupt one stops training when it is read
    mini.mp4(release / "video" / "video7.mp4", level=28, frames=4)
    code, _ = vqa("fit", cfg, tmp_path, "--overwrite")
    err = capsys.readouterr().err
    assert code == 1
    assert f"vqa: error: cannot decode video {release / 'video' / 'video23.mp4'}: " in err
    assert "(record 23 of " in err and "field 'video_id'='video23'" in err


def test_strict_mode_in_a_dataloader_worker_names_the_clip_and_record(release, mini):
    """torch re-raises a worker's error by calling its class with the worker's traceback as the only
    argument; the error the user gets is still a VideoDecodeError with the file, record and field."""
    from torch.utils.data import DataLoader, Subset

    from vqa_components.data.benchmarks import MSRVTTQADataset
    from vqa_components.data.video_io import VideoDecodeError

    mini.mp4(release / "video" / "video7.mp4", level=28, frames=4)  # only the corrupt clip 23 is left
    ds = MSRVTTQADataset(str(release), "train", num_frames=2, frame_size=32, on_bad_video="raise")
    loader = DataLoader(Subset(ds, [22, 23]), batch_size=1, num_workers=1, collate_fn=lambda rows: rows)
    with pytest.raises(VideoDecodeError) as err:
        list(loader)
    corrupt = release / "video" / "video23.mp4"
    assert err.value.path == str(corrupt)
    assert str(err.value).startswith(f"cannot decode video {corrupt}: ")
    assert "(record 23 of " in err.value.reason
    assert err.value.reason.endswith("train_qa.json, field 'video_id'='video23')")
    assert "\n" not in str(err.value)  # one line for the CLI; the worker's traceback is a note
    assert "in DataLoader worker process 0" in err.value.worker_traceback
    assert err.value.__notes__ == [err.value.worker_traceback.rstrip()]  # shown in a traceback


def test_strict_mode_with_workers_fails_naming_the_clip_from_the_cli(release, tmp_path, mini, capsys):
    mini.mp4(release / "video" / "video7.mp4", level=28, frames=4)
    cfg = config(release, tmp_path, mini, on_bad_video="raise")
    code, _ = vqa("fit", cfg, tmp_path, "--data.num_workers=1")
    err = capsys.readouterr().err
    assert code == 1
    line = next(line for line in err.splitlines() if line.startswith("vqa: error: "))
    assert line.startswith(f"vqa: error: cannot decode video {release / 'video' / 'video23.mp4'}: ")
    assert "(record 23 of " in line and "field 'video_id'='video23'" in line
    assert "Traceback" not in err and "RuntimeError" not in err


def test_malformed_records_left_out_at_start_up_are_reported_with_their_causes(release, tmp_path, mini, caplog):
    test = records(range(40, 44), first_id=200)
    test[1]["question"] = "   "  # empty question
    del test[2]["answer"]  # a missing field
    test[3]["video_id"] = 3.5  # a wrong type
    mini.write_json(release / "test_qa.json", test)
    cfg = config(release, tmp_path, mini, on_bad_record="skip")
    code, _ = vqa("test", cfg, tmp_path)
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/num_samples"] == 1 and metrics["protocol"]["skipped_malformed_records"] == 3
    assert {c: (s["count"], s["first_ids"]) for c, s in metrics["skipped"].items()} == {
        "missing_field": (1, ["id=202, video_id=42"]),
        "empty_question": (1, ["id=201, video_id=41"]),
        "malformed_record": (1, ["id=203"]),  # a float video_id is not shown as an id
    }
    assert "field 'question': must be a non-empty string" in metrics["skipped"]["empty_question"]["first"]


LONG = ("what is the colour of the ball that the tall man in the long red coat throws again and again at the "
        "white wall behind the old house by the river near the bridge in the small town")  # 40 tokens


def test_a_question_longer_than_the_encoder_s_limit_is_reported_or_stops_the_run(release, tmp_path, mini, capsys):
    test = records(range(40, 44), first_id=200)
    test[2]["question"] = LONG  # more than the small_transformer's 32 tokens
    mini.write_json(release / "test_qa.json", test)
    cfg = config(release, tmp_path, mini)
    code, _ = vqa("test", cfg, tmp_path)
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["test/num_samples"] == 3 and metrics["test/skipped_question_too_long"] == 1
    assert metrics["skipped"]["question_too_long"]["first_ids"] == ["record 2"]
    assert "(video_id='video42'): the question has" in metrics["skipped"]["question_too_long"]["first"]
    code, _ = vqa("test", cfg, tmp_path, "--model.on_long_question=raise")
    err = capsys.readouterr().err
    assert code == 1
    assert (
        f"vqa: error: {release / 'test_qa.json'}: record 2 [video_id='video42']: field 'question': the question has "
    ) in err and "more than the text encoder's limit of 32" in err
