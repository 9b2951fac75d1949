"""The ``vqa`` command: errors, listing, config round trip (in this process, through ``main``), the
installed console script in a real process, fit -> test in new processes (slow tier)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, run_vqa

QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def vqa(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``vqa ARGS`` in a new process (``python -m vqa_components.cli``)."""
    return subprocess.run([sys.executable, "-m", "vqa_components.cli", *args], capture_output=True, text=True,
                          cwd=cwd, check=False)


def test_the_installed_console_script_runs_in_a_new_process():
    """The one real-process run of the fast tier: the ``vqa`` executable pip wrote next to this Python."""
    script = Path(sys.executable).parent / "vqa"
    assert script.is_file(), f"{script}: the package is not installed (pip install -e '.[test]')"
    res = subprocess.run([str(script), "list", "fusion", "cross*"], capture_output=True, text=True, cwd=ROOT,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines()[0] == "fusion:"
    assert "cross_attention" in res.stdout and "concat_self_attention" not in res.stdout
    assert "Traceback" not in res.stderr


def test_unknown_fusion_is_one_line_with_suggestions(capsys):
    code, _ = run_vqa("fit", "--config", QUICKSTART, "--model.fusion", "cross_atention")
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cross_attention" in lines[0] and "did you mean" in lines[0].lower()
    assert "Traceback" not in err


def test_unknown_fusion_in_a_recipe_file(tmp_path, capsys):
    cfg = yaml.safe_load(Path(QUICKSTART).read_text())
    cfg["model"]["fusion"]["name"] = "no_such_fusion"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    code, _ = run_vqa("fit", "--config", str(bad))
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "no_such_fusion" in err and "concat_self_attention" in err


@pytest.mark.parametrize("arg", ["--model.fusion.init_args.num_layer", "--model.fusion.num_layer"])
def test_a_misspelt_argument_of_a_part_is_one_line_naming_the_closest_ones(arg, capsys):
    code, _ = run_vqa("fit", "--config", QUICKSTART, arg, "3")
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [(
        "vqa: error: --model.fusion: unknown argument 'num_layer' of fusion cross_attention. Did you mean "
        "'num_layers'? Valid arguments of cross_attention: video_dim, text_dim, dim, num_layers, num_heads, dropout")]
    # the part checked is the one a command-line name swapped in; an argument it takes parses
    code, printed = run_vqa("fit", "--config", QUICKSTART, "--model.fusion", "concat_self_attention",
                            "--model.fusion.num_streams", "1", "--print_config")
    assert code == 0, capsys.readouterr().err[-3000:]
    assert yaml.safe_load(printed)["model"]["fusion"]["init_args"]["num_streams"] == 1


def test_objectives_on_the_command_line_take_registry_names(capsys):
    code, printed = run_vqa("fit", "--config", QUICKSTART, "--model.objectives",
                            "[answer_cross_entropy, {name: vtm, in_dim: 128}]", "--print_config")
    assert code == 0, capsys.readouterr().err[-3000:]
    objectives = yaml.safe_load(printed)["model"]["objectives"]
    assert [o["class_path"].rsplit(".", 1)[1] for o in objectives] == ["AnswerCrossEntropy", "VideoTextMatching"]
    assert objectives[1]["init_args"]["in_dim"] == 128
    code, printed = run_vqa("fit", "--config", QUICKSTART, "--model.objectives+={name: vtm, in_dim: 64}",
                            "--print_config")  # appended to the recipe's
    assert code == 0, capsys.readouterr().err[-3000:]
    objectives = yaml.safe_load(printed)["model"]["objectives"]
    assert [o["class_path"].rsplit(".", 1)[1] for o in objectives] == ["AnswerCrossEntropy", "VideoTextMatching"]
    assert objectives[1]["init_args"]["in_dim"] == 64
    code, _ = run_vqa("fit", "--config", QUICKSTART, "--model.objectives", "[{name: vtmm}]")
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqa: error: unknown objective 'vtmm'. Did you mean 'vtm'")


def test_list_with_kind_and_wildcard(capsys):
    code, out = run_vqa("list", "fusion", "cross*")
    assert code == 0
    assert "cross_attention" in out and "concat_self_attention" not in out
    code, everything = run_vqa("list")
    assert code == 0
    for name in ("frame_cnn", "blind", "small_transformer", "uniform", "answer_classifier",
                 "answer_cross_entropy", "synthetic_vqa", "videoqa_json"):
        assert name in everything
    capsys.readouterr()
    assert run_vqa("list", "fusion", "zzz*")[0] == 1
    assert "no parts match 'zzz*'" in capsys.readouterr().err


def test_list_of_a_misspelt_kind_suggests_the_kind(capsys):
    code, _ = run_vqa("list", "fusoin")
    assert code == 1
    line = capsys.readouterr().err.strip()
    assert "no parts match 'fusoin'" in line and "the kind 'fusion'" in line and "vqa list fusion" in line
    code, _ = run_vqa("list", "fusoin", "cross*")  # KIND PATTERN with a misspelt kind: a usage error
    err = capsys.readouterr().err
    assert code == 2 and "Did you mean 'fusion'" in err and "Traceback" not in err


def test_config_takes_a_packaged_recipe_s_name(capsys):
    code, by_name = run_vqa("fit", "--config", "quickstart", "--print_config")
    assert code == 0, capsys.readouterr().err[-3000:]
    assert by_name == run_vqa("fit", "-c", QUICKSTART, "--print_config")[1]
    assert "synthetic_vqa" in by_name
    code, _ = run_vqa("fit", "--config", "quikstart")
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [(
        "vqa: error: recipe not found: 'quikstart' is neither a file nor a packaged recipe. Did you mean "
        "'quickstart'? (vqa recipes lists them)")]


def test_vqa_recipes_lists_every_yaml_with_its_paper_and_dataset(capsys):
    code, out = run_vqa("recipes")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "recipes:" and lines[1].split() == ["name", "paper", "dataset", "description"]
    columns = [lines[1].index(c) for c in ("paper", "dataset", "description")]
    rows = {line.split()[0]: line for line in lines[2:] if line.startswith("  ")}
    recipes = ROOT / "recipes"
    assert set(rows) == {p.relative_to(recipes).with_suffix("").as_posix() for p in recipes.rglob("*.yaml")}
    quickstart = rows["quickstart"]
    assert quickstart[columns[1] : columns[2]].strip() == "synthetic_vqa"
    assert quickstart[columns[2] :].startswith("Quickstart: a small VideoQA model")
    assert rows["videodistill/tiny/f_full"][columns[0] : columns[1]].strip() == "VideoDistill (CVPR 2024)"
    sweeps = sorted(p.relative_to(recipes).with_suffix("").as_posix() for p in recipes.glob("sweeps/**/*.yaml"))
    listed = [line.split()[0] for line in lines[lines.index("sweeps:") + 1 :]] if "sweeps:" in lines else []
    assert listed == sweeps  # last, under their own heading

    code, out = run_vqa("recipes", "videodistill/tiny/*")
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert code == 0 and "videodistill/tiny/f_full" in names and all(n.startswith("videodistill/tiny/") for n in names)
    capsys.readouterr()
    assert run_vqa("recipes", "zzz*")[0] == 1
    assert "no recipes match 'zzz*'" in capsys.readouterr().err


def test_vqa_recipes_shows_sweep_files_under_their_own_heading(tmp_path, monkeypatch):
    from vqa_components import packaged_recipes

    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "seeds.yaml").write_text("# three seeds of mine\nruns: [{recipe: mine, seeds: [0, 1, 2]}]\n")
    (tmp_path / "mine.yaml").write_text("# my recipe\ndata: {dataset: webvid}\n")
    monkeypatch.setattr(packaged_recipes, "recipes_root", lambda: tmp_path)
    assert run_vqa("recipes") == (0, (
        "recipes:\n"
        "  name  paper  dataset  description\n"
        "  mine  -      webvid   my recipe\n"
        "sweeps:\n"
        "  sweeps/seeds  three seeds of mine\n"))  # fmt: skip


def test_vqa_recipes_imports_no_torch():
    script = "import sys; from vqa_components.cli import main; code = main(['recipes']); " \
             "sys.exit(3 if 'torch' in sys.modules else code)"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr[-3000:]


def test_vqa_recipes_copy_writes_a_copy_that_parses_and_keeps_edits(tmp_path, capsys):
    packaged = ROOT / "recipes" / "videodistill" / "tiny" / "f_full.yaml"
    copy = tmp_path / "mine" / "f_full.yaml"
    code, out = run_vqa("recipes", "copy", "videodistill/tiny/f_full", tmp_path / "mine")
    assert code == 0, capsys.readouterr().err[-3000:]
    assert out.splitlines() == [f"written: {copy}", f"run it:  vqa fit --config {copy}"]
    assert copy.read_bytes() == packaged.read_bytes()
    code, printed = run_vqa("fit", "--config", copy, "--print_config")
    assert code == 0, capsys.readouterr().err[-3000:]
    assert printed == run_vqa("fit", "--config", "videodistill/tiny/f_full", "--print_config")[1]

    copy.write_text(copy.read_text() + "# edited\n")
    edited = copy.read_bytes()
    capsys.readouterr()
    assert run_vqa("recipes", "copy", "videodistill/tiny/f_full", tmp_path / "mine")[0] == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"vqa: error: {copy} already exists: --force overwrites"]
    assert copy.read_bytes() == edited
    assert run_vqa("recipes", "copy", "videodistill/tiny/f_full", tmp_path / "mine", "--force")[0] == 0
    assert copy.read_bytes() == packaged.read_bytes()


def test_explain_index_that_is_not_a_number_is_one_line(capsys):
    code, _ = run_vqa("explain", "--config", QUICKSTART, "--index", "x")
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "vqa: error: --index 'x': expected the number of a sample of the split (0, 1, ...)"]


def test_a_model_argument_that_cannot_work_is_one_line(tmp_path, capsys):
    code, _ = run_vqa("fit", "--config", QUICKSTART, "--model.init_parts", "[backbone]",
                      f"--trainer.default_root_dir={tmp_path}")
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith("vqa: error: init_parts ['backbone'] is set but init_from is not")
    assert "--model.init_from" in lines[-1] and "--model.init_parts null" in lines[-1]


def test_print_config_reparses_and_trains(tmp_path, tiny_data, capsys):
    code, printed_text = run_vqa("fit", "--config", QUICKSTART, "--model.fusion", "concat_self_attention",
                                 "--print_config")
    assert code == 0, capsys.readouterr().err[-3000:]
    printed = tmp_path / "printed.yaml"
    printed.write_text(printed_text)
    cfg = yaml.safe_load(printed_text)
    assert cfg["model"]["fusion"]["class_path"].endswith("ConcatSelfAttentionFusion")
    code, _ = run_vqa("fit", "--config", str(printed), "--trainer.fast_dev_run=1",
                      f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false",
                      *tiny_data)
    assert code == 0, capsys.readouterr().err[-3000:]


@pytest.mark.slow
def test_fit_then_test_best_and_last_in_new_processes(tmp_path, tiny_data):
    root = tmp_path / "run"
    common = ["--config", QUICKSTART, f"--trainer.default_root_dir={root}", *tiny_data]
    fit = vqa("fit", *common, "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert list((root / "logs").rglob("metrics.csv"))  # CSV logs by default

    # what Lightning itself writes, read without running pickled code; it also starts a later stage
    import torch

    from vqa_components.cli import release, run_cli
    from vqa_components.weights import read_checkpoint

    last = root / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert read_checkpoint(last)["state_dict"].keys() == state["state_dict"].keys()
    cli = run_cli(["--config", QUICKSTART, f"--model.init_from={last}", *tiny_data], run=False)
    model = cli.model
    release(cli)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["state_dict"][key]), key
    assert model.backbone.weights_source == f"{last} (init_from)"

    best = list((root / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    # checkpoint.monitor auto: the classifier reports an answer accuracy, so the best is the highest val/acc
    ckpt_state = next(v for k, v in state["callbacks"].items() if k.startswith("BestCheckpoint"))
    assert ckpt_state["monitor"] == "val/acc" and ckpt_state["best_model_path"] == str(best[0])
    accs = [float(r["val/acc"]) for r in csv.DictReader(next((root / "logs").rglob("metrics.csv")).open()) if r["val/acc"]]
    assert float(ckpt_state["best_model_score"]) == pytest.approx(max(accs))
    for which, expected in (("best", best[0]), ("last", last)):
        res = vqa("test", *common, "--ckpt_path", which)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"Loaded model weights from the checkpoint at {expected}\n" in res.stdout + res.stderr
        metrics = json.loads((root / "test_metrics.json").read_text())
        assert metrics["test/num_samples"] == 16  # --data.dataset_args.num_test=16, each counted once
        correct = metrics["test/acc"] * 16
        assert abs(correct - round(correct)) < 1e-4  # a count of right answers out of 16
        families = [metrics[f"test/acc_{fam}"] for fam in ("spatial", "motion", "counting", "needle")]
        assert metrics["test/acc"] == pytest.approx(sum(families) / 4)  # 4 questions per family
        assert "question family" in res.stdout and "needle" in res.stdout


def test_ckpt_best_without_a_fit_is_a_clear_error(tmp_path, tiny_data, capsys):
    code, _ = run_vqa("test", "--config", QUICKSTART, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path", "best",
                      *tiny_data)
    err = capsys.readouterr().err
    assert code == 2
    assert "no checkpoint" in err and str(tmp_path) in err


def test_malformed_annotation_file_is_one_line_naming_file_and_record(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps([
        {"video_id": "v0", "question": "what?", "answer": "a", "question_type": "what"},
        {"video_id": "v1", "question": "what?", "question_type": "what", "id": 7},
    ]))
    code, _ = run_vqa("fit", "--config", QUICKSTART, "--data.dataset=videoqa_json",
                      f"--data.dataset_args={{annotation_file: {ann}, video_dir: {videos}, num_frames: 4}}",
                      f"--trainer.default_root_dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert str(ann) in lines[-1] and "record 1" in lines[-1] and "id=7" in lines[-1] and "'answer'" in lines[-1]


def test_in_process_runs_free_their_model_and_fast_dev_run_writes_no_checkpoint(tmp_path, tiny_data):
    """``main([...])`` from Python must not keep the model alive (jsonargparse caches parsers that
    reference the CLI), or a loop of runs in one process grows without bound. Models that earlier
    in-process runs of this worker left behind (a run that stopped on an error) may be freed meanwhile:
    only the models these runs built must be gone."""
    import contextlib
    import gc
    import io
    import weakref

    from vqa_components.cli import main
    from vqa_components.model import VideoQAModel

    def live_models() -> weakref.WeakSet:
        gc.collect()
        return weakref.WeakSet(o for o in gc.get_objects() if issubclass(type(o), VideoQAModel))  # not weakproxies

    before = live_models()
    for i in range(2):
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["fit", "--config", QUICKSTART, "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
                         f"--trainer.default_root_dir={tmp_path / str(i)}", "--trainer.enable_progress_bar=false",
                         *tiny_data])
        assert code == 0
    leaked = len(set(live_models()) - set(before))
    assert leaked == 0, f"{leaked} finished run(s)' model still referenced"
    assert not list(tmp_path.rglob("*.ckpt")), "fast_dev_run wrote a checkpoint"


@pytest.mark.slow
def test_a_second_fit_into_a_run_folder_stops_unless_resumed_or_overwritten(tmp_path, tiny_data, capsys):
    import torch

    from vqa_components.cli import main

    root = tmp_path / "run"
    common = ["--config", QUICKSTART, f"--trainer.default_root_dir={root}", *tiny_data, "--trainer.accelerator=cpu",
              "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    last = root / "checkpoints" / "last.ckpt"

    def step_of_last() -> int:
        return torch.load(last, map_location="cpu", weights_only=True)["global_step"]

    assert main(["fit", *common, "--trainer.max_epochs=1", "--ckpt_path", "last"]) == 2  # nothing to resume
    assert "no checkpoint in" in capsys.readouterr().err
    assert main(["fit", *common, "--trainer.max_epochs=1"]) == 0
    assert step_of_last() == 1
    (root / "test_metrics.json").write_text("{}")  # an earlier test of the run
    capsys.readouterr()
    before = last.stat().st_mtime_ns

    assert main(["fit", *common, "--trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vqa: error: {root / 'checkpoints'} already holds checkpoints")
    assert "--ckpt_path last" in err[0] and "--overwrite" in err[0] and "--trainer.default_root_dir" in err[0]
    assert last.stat().st_mtime_ns == before  # nothing was touched

    assert main(["fit", *common, "--trainer.max_epochs=2", "--ckpt_path", "last"]) == 0  # resumes
    assert step_of_last() == 2
    assert main(["fit", *common, "--trainer.max_epochs=1", "--ckpt_path", "last", "--overwrite"]) == 2

    assert main(["fit", *common, "--trainer.max_epochs=1", "--overwrite"]) == 0  # a new run in its place
    assert step_of_last() == 1
    assert not (root / "test_metrics.json").exists()  # the earlier run's figures went with it
    assert main(["test", *common, "--ckpt_path", "last", "--overwrite"]) == 2  # fit only


def test_only_the_process_the_user_started_checks_for_an_earlier_run(monkeypatch):
    """DDP ranks started by Lightning (LOCAL_RANK), torchrun (RANK) or SLURM re-run the command line."""
    from vqa_components.cli import is_launching_process

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert is_launching_process()
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_launching_process()  # torchrun's rank 0
    for key in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.setenv(key, "1")
        assert not is_launching_process(), key
        monkeypatch.setenv(key, "0")


def test_checkpoint_monitor_auto_follows_what_the_model_reports():
    from types import SimpleNamespace

    from vqa_components.lightning_cli import BestCheckpoint

    def resolved(metrics, **kwargs):
        cb = BestCheckpoint(**kwargs)
        key = cb.state_key
        cb._resolve_monitor(SimpleNamespace(callback_metrics=metrics))
        assert cb.state_key == key  # a resumed run finds the state under the same key
        return cb.monitor, cb.mode, float(cb.kth_value)

    inf = float("inf")
    assert resolved({"val/acc": 0.5, "val/loss": 1.0}) == ("val/acc", "max", -inf)
    assert resolved({"val/loss": 1.0}) == ("val/loss", "min", inf)  # e.g. caption pretraining: no answers
    assert resolved({"train/loss": 1.0})[0] is None  # no validation: the latest checkpoint
    assert resolved({"val/loss": 1.0}, monitor="val/acc_needle")[:2] == ("val/acc_needle", "max")
    assert resolved({}, monitor="val/vtm")[:2] == ("val/vtm", "max")
    assert resolved({}, monitor="val/contrastive_loss")[:2] == ("val/contrastive_loss", "min")
    assert resolved({"val/acc": 0.5}, mode="min")[:2] == ("val/acc", "min")  # an explicit mode is kept
    resumed = BestCheckpoint()
    resumed.load_state_dict({"monitor": "val/loss", "best_model_score": torch.tensor(0.3), "best_model_path": "b"})
    assert (resumed.monitor, resumed.mode, float(resumed.best_model_score)) == ("val/loss", "min", pytest.approx(0.3))
