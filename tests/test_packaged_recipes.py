"""Recipes by name (``vqa_components.packaged_recipes``): lookup and its one-line error, ``base:``
includes and ``./`` paths, the digest results are keyed on, the listing, copies. The slow tier
builds the wheel, installs it outside the checkout and trains the quickstart recipe by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import TINY_DATA
from helpers import ROOT

from vqa_components import packaged_recipes as pr
from vqa_components.interfaces import ConfigError

RECIPES = ROOT / "recipes"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_recipe_is_found_by_name_with_or_without_yaml_or_by_path(tmp_path, monkeypatch):
    assert pr.recipes_root() == RECIPES  # the editable install reads the checkout
    assert pr.find_recipe("quickstart") == RECIPES / "quickstart.yaml"
    assert pr.find_recipe("quickstart.yaml") == RECIPES / "quickstart.yaml"
    assert pr.find_recipe("videodistill/tiny/f_full") == RECIPES / "videodistill/tiny/f_full.yaml"
    monkeypatch.chdir(tmp_path)
    assert pr.find_recipe("recipes/quickstart.yaml") == RECIPES / "quickstart.yaml"  # the docs' paths, anywhere
    own = write(tmp_path / "quickstart.yaml", "trainer: {}\n")
    assert pr.find_recipe("quickstart.yaml") == Path("quickstart.yaml")  # an existing file wins
    assert pr.find_recipe(own) == own


def test_an_unknown_recipe_is_one_line_naming_the_closest():
    with pytest.raises(ConfigError) as err:
        pr.find_recipe("quikstart")
    assert str(err.value) == ("recipe not found: 'quikstart' is neither a file nor a packaged recipe. "
                              "Did you mean 'quickstart'? (vqa recipes lists them)")  # fmt: skip
    with pytest.raises(ConfigError, match=r"Did you mean 'videodistill/tiny/f_full'"):
        pr.find_recipe("videodistill/tiny/f_ful")
    with pytest.raises(ConfigError, match=r"^recipe not found: 'zzz' is neither .* packaged recipe \(vqa recipes"):
        pr.find_recipe("zzz")


def test_base_is_merged_under_the_recipe_and_dot_paths_resolve_from_their_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory plays no part in either
    write(tmp_path / "common/root.yaml", "seed_everything: 1\ntrainer: {devices: 1}\n")
    write(tmp_path / "common/base.yaml", (
        "base: root.yaml\n"
        "trainer: {default_root_dir: runs/base, max_epochs: 3, callbacks: [a, b]}\n"
        "model: {head: {name: answer_classifier, in_dim: 64, num_answers: 16}, vocab_file: ./vocab.txt}\n"
        "data: {dataset: synthetic_vqa, dataset_args: {root: ../data}}\n"
    ))  # fmt: skip
    top = write(tmp_path / "exp/top.yaml", (
        "base: ../common/base.yaml\n"
        "trainer: {max_epochs: 5, callbacks: [c]}\n"
        "model: {head: {num_answers: 8}, extra: ./notes/x.txt}\n"
    ))  # fmt: skip
    assert pr.load_recipe(top) == {
        "seed_everything": 1,
        "trainer": {"devices": 1, "default_root_dir": "runs/base", "max_epochs": 5, "callbacks": ["c"]},
        "model": {
            "head": {"name": "answer_classifier", "in_dim": 64, "num_answers": 8},
            "vocab_file": str(tmp_path / "common/vocab.txt"),
            "extra": str(tmp_path / "exp/notes/x.txt"),
        },
        "data": {"dataset": "synthetic_vqa", "dataset_args": {"root": str(tmp_path / "data")}},
    }
    assert pr.recipe_sources(top) == [top, tmp_path / "common/base.yaml", tmp_path / "common/root.yaml"]


def test_base_may_name_a_packaged_recipe_and_a_part_under_another_name_replaces_its_part(tmp_path):
    top = write(tmp_path / "mine.yaml", (
        "base: quickstart\n"
        "model: {fusion: {name: concat_self_attention, dim: 128}, head: {num_answers: 8}}\n"
    ))  # fmt: skip
    quickstart = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    merged = pr.load_recipe(top)
    assert merged["model"]["fusion"] == {"name": "concat_self_attention", "dim": 128}  # not cross_attention's args
    assert merged["model"]["head"] == {**quickstart["model"]["head"], "num_answers": 8}
    assert merged["data"] == quickstart["data"]
    assert pr.recipe_sources(top) == [top, RECIPES / "quickstart.yaml"]


def test_an_include_cycle_or_a_missing_base_is_one_line(tmp_path):
    a = write(tmp_path / "a.yaml", "base: sub/b.yaml\n")
    write(tmp_path / "sub/b.yaml", "base: ../a.yaml\n")
    with pytest.raises(ConfigError) as err:
        pr.load_recipe(a)
    assert str(err.value) == f"recipe includes itself: {a} -> {tmp_path / 'sub/b.yaml'} -> {a}"
    c = write(tmp_path / "c.yaml", "base: quikstart\n")
    with pytest.raises(ConfigError) as err:
        pr.load_recipe(c)
    assert str(err.value) == (f"{c}: base 'quikstart' is neither a file beside it nor a packaged recipe. "
                              "Did you mean 'quickstart'? (vqa recipes lists them)")  # fmt: skip


def test_the_digest_is_what_the_recipe_configures_and_covers_the_base(tmp_path):
    base = write(tmp_path / "base.yaml", "trainer: {max_epochs: 3}\n")
    top = write(tmp_path / "top.yaml", "base: ./base.yaml\nmodel: {head: {num_answers: 8}}\n")
    before = pr.recipe_digest(top)
    write(tmp_path / "top.yaml", "# a comment, another layout\nbase: base.yaml\nmodel:\n  head:\n    num_answers: 8\n")
    assert pr.recipe_digest(top) == before  # comments, layout and how base is named do not count
    copy = write(tmp_path / "elsewhere/top.yaml", (tmp_path / "top.yaml").read_text())
    write(tmp_path / "elsewhere/base.yaml", base.read_text())
    assert pr.recipe_digest(copy) == before  # nor where the files are
    base.write_text("trainer: {max_epochs: 4}\n")
    assert pr.recipe_digest(top) != before  # what the base configures does
    write(tmp_path / "elsewhere/top.yaml", "base: base.yaml\nmodel: {head: {num_answers: 9}}\n")
    assert pr.recipe_digest(copy) != before  # and what the recipe does
    assert pr.recipe_digest(RECIPES / "quickstart.yaml") != pr.recipe_digest(RECIPES / "quickstart_question_only.yaml")


def test_the_listing_has_every_yaml_recipes_first_and_sweeps_unparsed(tmp_path, monkeypatch):
    infos = pr.list_recipes()
    assert sorted(i.path for i in infos) == sorted(RECIPES.rglob("*.yaml"))
    by_name = {i.name: i for i in infos}
    assert by_name["quickstart"].dataset == "synthetic_vqa"
    assert by_name["quickstart"].description.startswith("Quickstart: a small VideoQA model")
    assert (by_name["videodistill/tiny/f_full"].paper, by_name["cotok/pretrain"].paper) == (
        "VideoDistill (CVPR 2024)", "Iterative co-tokenization (2022)")  # fmt: skip
    assert by_name["evilm/tiny/finetune"].paper == "E-ViLM (2023)" and by_name["quickstart"].paper == "-"

    # a sweep file is listed, not read as a recipe (this one's base would not resolve)
    write(tmp_path / "sweeps/seeds.yaml", "# five seeds\nbase: nope\nruns: [{recipe: zz, seeds: [0, 1]}]\n")
    write(tmp_path / "zz.yaml", "# the last recipe\n")
    write(tmp_path / "aa.yaml", "# the first\ndata: {class_path: X, init_args: {dataset: webvid}}\n")
    monkeypatch.setattr(pr, "recipes_root", lambda: tmp_path)
    kinds = [(i.name, i.kind, i.dataset, i.description) for i in pr.list_recipes()]
    assert kinds == [("aa", "recipe", "webvid", "the first"), ("zz", "recipe", None, "the last recipe"),
                     ("sweeps/seeds", "sweep", None, "five seeds")]  # fmt: skip
    assert pr.find_recipe("sweeps/seeds") == tmp_path / "sweeps/seeds.yaml"
    with pytest.raises(ConfigError, match=r"Did you mean 'sweeps/seeds'\?"):  # sweeps suggest sweeps
        pr.find_recipe("sweeps/sedes")


def test_a_copy_keeps_the_layout_of_its_includes_and_reads_the_same(tmp_path):
    src = tmp_path / "src"
    write(src / "common/base.yaml", "base: quickstart\ntrainer: {max_epochs: 2}\n")
    top = write(src / "exp/top.yaml", "# mine\nbase: ../common/base.yaml\nmodel: {head: {num_answers: 8}}\n")
    written = pr.copy_recipe(top, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert written == [copy / "exp/top.yaml", copy / "common/base.yaml", copy / "quickstart.yaml"]
    assert written[0].read_bytes() == top.read_bytes()
    assert written[2].read_bytes() == (RECIPES / "quickstart.yaml").read_bytes()
    # the base named by name now names the copy beside it, so that editing the copy takes effect
    assert written[1].read_text().startswith("base: ../quickstart.yaml  # was: base: quickstart\n")
    assert pr.recipe_sources(written[0]) == written
    assert pr.load_recipe(written[0]) == pr.load_recipe(top)
    alone = pr.copy_recipe("videodistill/tiny/f_full", tmp_path / "alone")
    assert alone == [tmp_path / "alone/f_full.yaml"]


@pytest.mark.slow
def test_the_wheel_ships_every_recipe_and_trains_quickstart_by_name_outside_the_checkout(tmp_path):
    """Built from a copy of the checkout (no stale build/ folder), installed with ``--target``, run from a
    folder outside any checkout with that folder first on the path: the installed copy is the one used."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"))  # fmt: skip
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "wheel", source],
                   check=True, cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("vqa_components-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {f"vqa_components/recipes/{p.relative_to(RECIPES).as_posix()}" for p in RECIPES.rglob("*.yaml")}
    assert shipped == expected and len(shipped) > 60

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    # `python -m vqa_components.cli ARGS`, then the file the run imported vqa_components from
    probe = ("import runpy, sys\ntry:\n    runpy.run_module('vqa_components.cli', run_name='__main__', alter_sys=True)\n"
             "finally:\n    import vqa_components.packaged_recipes as p\n"
             "    print('imported from', sys.modules['vqa_components'].__file__, p.recipes_root())\n")  # fmt: skip

    def vqa(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=work,
                              env={**env, **extra}, check=False)  # fmt: skip

    listed = vqa("recipes")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert f"imported from {site / 'vqa_components/__init__.py'} {site / 'vqa_components/recipes'}" in listed.stdout
    assert len([line for line in listed.stdout.splitlines() if line.startswith("  ")]) == len(expected) + 1
    # without the target first on the path the editable install answers: the line above proves something
    editable = subprocess.run([sys.executable, "-c", probe, "recipes"], capture_output=True, text=True, cwd=work,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, check=False)  # fmt: skip
    assert f"imported from {ROOT / 'vqa_components/__init__.py'} {RECIPES}" in editable.stdout

    fit = vqa("fit", "--config", "quickstart", "--trainer.max_steps=2", "--trainer.limit_train_batches=2",
              "--trainer.limit_val_batches=1", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
              *TINY_DATA)  # fmt: skip
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    assert f"imported from {site / 'vqa_components/__init__.py'}" in fit.stdout
    assert (work / "runs/quickstart/checkpoints/last.ckpt").is_file()  # relative to the working directory
