"""Sweep files: the packaged ones name real recipes; runs, rows and keys; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vqa_components.interfaces import ConfigError
from vqa_components.packaged_recipes import list_recipes
from vqa_components.sweep import load_sweep

SWEEPS = [info.name for info in list_recipes() if info.kind == "sweep"]


def test_the_papers_tables_are_packaged_sweeps():
    assert {"sweeps/quickstart", "sweeps/videodistill_table4", "sweeps/cotok_ablations", "sweeps/evilm_table5",
            "sweeps/evilm_table6"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_packaged_sweep_names_packaged_recipes(name):
    sweep = load_sweep(name)
    runs = sweep.runs()
    assert len(runs) == len(sweep.runs_by_name) * len(sweep.overrides) * len(sweep.seeds)
    assert len({r.key() for r in runs}) == len(runs)  # every run, seed and override its own key
    assert all(s.recipe.is_file() for run in runs for s in run.stages)
    assert any(run.stages[-1].test for run in runs)  # the table has rows


def write(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_keys_follow_what_decides_a_result(tmp_path):
    write(tmp_path, "base: quickstart\ntrainer: {max_epochs: 1}\n", "a.yaml")
    write(tmp_path, "base: quickstart_question_only\n", "b.yaml")
    text = ("seeds: [0, 1]\nruns:\n  a: {recipe: ./a.yaml, label: A}\n  b: ./b.yaml\n"
            "overrides: {fp32: [], bf16: [--trainer.precision=bf16-mixed]}\n")
    sweep = load_sweep(write(tmp_path, text))
    keys = {(r.name, r.override, r.seed): r.key() for r in sweep.runs()}
    assert len(set(keys.values())) == 8
    assert [r.row for r in sweep.runs()[:4]] == ["A [fp32]", "A [bf16]", "b [fp32]", "b [bf16]"]
    # a new label keeps every key; a changed recipe changes its runs' keys only; so does a base it reads
    write(tmp_path, text.replace("label: A", "label: the first"))
    assert {(r.name, r.override, r.seed): r.key() for r in load_sweep(tmp_path / "sweep.yaml").runs()} == keys
    write(tmp_path, "base: quickstart\ntrainer: {max_epochs: 2}\n", "a.yaml")
    changed = {(r.name, r.override, r.seed): r.key() for r in load_sweep(tmp_path / "sweep.yaml").runs()}
    assert {k for k in keys if keys[k] != changed[k]} == {k for k in keys if k[0] == "a"}
    # arguments after -- are part of every key
    sweep = load_sweep(tmp_path / "sweep.yaml")
    sweep.args = ("--trainer.max_epochs=3",)
    assert not {r.key() for r in sweep.runs()} & set(changed.values())


@pytest.mark.parametrize(("runs", "message"), [
    ("a: {recipe: quickstart, stages: []}", "give either recipe (one stage) or stages"),
    ("a: {recipe: quickstart, lable: x}", "unknown key 'lable'"),
    ("a: {stages: [{name: s, recipe: quickstart, args: ['--model.init_from={t.last}']}]}", "'{t}' in "),
    ("a: {stages: [{name: s, recipe: quickstart}, {name: s, recipe: quickstart}]}", "a second stage named 's'"),
    ("a: {recipe: quikstart}", "Did you mean 'quickstart'?"),
    ("a: {recipe: quickstart, args: --trainer.max_epochs=1}", "a list of vqa arguments"),
])
def test_sweep_file_errors_are_one_line(tmp_path, runs, message):
    path = write(tmp_path, "runs:\n  " + runs + "\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_a_recipe_is_not_a_sweep_file(tmp_path):
    with pytest.raises(ConfigError, match="not a sweep file"):
        load_sweep("quickstart")
    sweep = load_sweep(write(tmp_path, yaml.safe_dump({"runs": {"quick": "quickstart"}, "seeds": [3]})))
    assert [(r.name, r.seed, r.row, [s.name for s in r.stages]) for r in sweep.runs()] == [("quick", 3, "quick", ["train"])]
    with pytest.raises(ConfigError, match="no run 'quik'. Did you mean 'quick'"):
        sweep.runs(only=["quik"])
