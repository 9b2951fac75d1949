"""The ``vqa`` command: errors, listing, config round trip, fit -> test in a new process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def vqa(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqa_components.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_unknown_fusion_is_one_line_with_suggestions():
    res = vqa("fit", "--config", QUICKSTART, "--model.fusion", "cross_atention")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "cross_attention" in lines[0] and "did you mean" in lines[0].lower()
    assert "Traceback" not in res.stderr


def test_unknown_fusion_in_a_recipe_file(tmp_path):
    cfg = yaml.safe_load(Path(QUICKSTART).read_text())
    cfg["model"]["fusion"]["name"] = "no_such_fusion"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    res = vqa("fit", "--config", str(bad))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert "no_such_fusion" in res.stderr and "concat_self_attention" in res.stderr


def test_list_with_kind_and_wildcard():
    res = vqa("list", "fusion", "cross*")
    assert res.returncode == 0
    assert "cross_attention" in res.stdout and "concat_self_attention" not in res.stdout
    everything = vqa("list")
    for name in ("frame_cnn", "blind", "small_transformer", "uniform", "answer_classifier",
                 "answer_cross_entropy", "synthetic_vqa", "videoqa_json"):
        assert name in everything.stdout
    assert vqa("list", "fusion", "zzz*").returncode == 1


def test_print_config_reparses_and_trains(tmp_path, tiny_data):
    res = vqa("fit", "--config", QUICKSTART, "--model.fusion", "concat_self_attention", "--print_config")
    assert res.returncode == 0, res.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(res.stdout)
    cfg = yaml.safe_load(res.stdout)
    assert cfg["model"]["fusion"]["class_path"].endswith("ConcatSelfAttentionFusion")
    res2 = vqa("fit", "--config", str(printed), "--trainer.fast_dev_run=1",
               f"--trainer.default_root_dir={tmp_path / 'run'}", *tiny_data)
    assert res2.returncode == 0, res2.stderr[-3000:]


@pytest.mark.slow
def test_fit_then_test_best_and_last_in_new_processes(tmp_path, tiny_data):
    root = tmp_path / "run"
    common = ["--config", QUICKSTART, f"--trainer.default_root_dir={root}", *tiny_data]
    fit = vqa("fit", *common, "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert list((root / "logs").rglob("metrics.csv"))  # CSV logs by default

    for which in ("best", "last"):
        res = vqa("test", *common, "--ckpt_path", which)
        assert res.returncode == 0, res.stderr[-3000:]
        metrics = json.loads((root / "test_metrics.json").read_text())
        assert 0.0 <= metrics["test/acc"] <= 1.0
        for fam in ("spatial", "motion", "counting", "needle"):
            assert f"test/acc_{fam}" in metrics
        assert "question family" in res.stdout and "needle" in res.stdout


def test_ckpt_best_without_a_fit_is_a_clear_error(tmp_path, tiny_data):
    res = vqa("test", "--config", QUICKSTART, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path", "best",
              *tiny_data)
    assert res.returncode == 2
    assert "no checkpoint" in res.stderr and str(tmp_path) in res.stderr


def test_malformed_annotation_file_is_one_line_naming_file_and_record(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps([
        {"video_id": "v0", "question": "what?", "answer": "a", "question_type": "what"},
        {"video_id": "v1", "question": "what?", "question_type": "what", "id": 7},
    ]))
    res = vqa("fit", "--config", QUICKSTART, "--data.dataset=videoqa_json",
              f"--data.dataset_args={{annotation_file: {ann}, video_dir: {videos}, num_frames: 4}}",
              f"--trainer.default_root_dir={tmp_path / 'run'}")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr
    assert str(ann) in lines[-1] and "record 1" in lines[-1] and "id=7" in lines[-1] and "'answer'" in lines[-1]


def test_in_process_runs_free_their_model_and_fast_dev_run_writes_no_checkpoint(tmp_path, tiny_data):
    """``main([...])`` from Python must not keep the model alive (jsonargparse caches parsers that
    reference the CLI), or a loop of runs in one process grows without bound."""
    import contextlib
    import gc
    import io

    from vqa_components.cli import main
    from vqa_components.model import VideoQAModel

    def live_models() -> int:
        gc.collect()
        return sum(isinstance(o, VideoQAModel) for o in gc.get_objects())

    before = live_models()
    for i in range(2):
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["fit", "--config", QUICKSTART, "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
                         f"--trainer.default_root_dir={tmp_path / str(i)}", "--trainer.enable_progress_bar=false",
                         *tiny_data])
        assert code == 0
    assert live_models() == before, "a finished run's model is still referenced"
    assert not list(tmp_path.rglob("*.ckpt")), "fast_dev_run wrote a checkpoint"
