"""experiments/evilm_codebook.py: a sweep's tokenizer runs, one codebook row per tokenizer recipe and epochs."""

from __future__ import annotations

import json

from helpers import load_experiment

from vqa_components.packaged_recipes import find_recipe, load_recipe


def record(key, run, seed, recipe, fit_args=(), run_args=(), returncode=0, stages=("vocab", "tokenizer")):
    """A record of sweep.json as vqa sweep writes it, for a chain with these stages."""
    path = str(find_recipe(recipe))
    commands = {"vocab": [["vocab", "--config", path, "--out", f"runs/{run}/seed{seed}/vocab.txt"]],
                "tokenizer": [["fit", "--config", path, *run_args, *fit_args, f"--seed_everything={seed}"]],
                "finetune": [["fit", "--config", str(find_recipe("evilm/tiny/finetune")), *run_args]]}
    return {"key": key, "run": run, "override": "", "seed": seed, "args": list(run_args), "returncode": returncode,
            "recipes": {s: {"path": path, "sha256": None} for s in stages},
            "metrics": None if returncode else {}, "stages": [
                {"name": s, "command": commands[s][0][0], "returncode": returncode, "commands": commands[s],
                 "val_metrics": {"val/svq_token_loss": 0.1 + seed / 100}} for s in stages]}


def test_a_longer_tokenizer_gets_its_own_row(tmp_path):
    """Stage 1 trained longer (``--trainer.max_epochs`` in the stage's command, from the stage's or the
    run's arguments) is a row of its own; without it the recipe's ``max_epochs``; a failed run and a
    chain without a tokenizer stage are no entry; a run already in codebook.json is not measured again."""
    codebook = load_experiment("evilm_codebook")
    recipe = load_recipe(find_recipe("evilm/tiny/tokenizer"))["trainer"]["max_epochs"]
    longer = recipe + 4
    records = [record(f"f{s}", "focal", s, "evilm/tiny/tokenizer") for s in (0, 1, 2)]
    records += [record("l0", "focal_long", 0, "evilm/tiny/tokenizer", fit_args=[f"--trainer.max_epochs={longer}"]),
                record("l1", "focal_long_run_args", 1, "evilm/tiny/tokenizer",
                       run_args=["--trainer.max_epochs", str(longer)]),
                record("b0", "bce", 0, "evilm/tiny/tokenizer_bce"),
                record("x0", "failed", 0, "evilm/tiny/tokenizer", fit_args=["--trainer.max_epochs=9"], returncode=1),
                record("n0", "no_stage_1", 0, "evilm/tiny/finetune", stages=("vocab", "finetune"))]
    (tmp_path / "sweep.json").write_text(json.dumps({"records": records}))
    measured = []

    def measure(rec, out):
        measured.append(rec["key"])
        figures = {"utilisation": 0.5 + rec["seed"] / 10, "perplexity": 10.0, "codes": 256, "tokens": 100,
                   "val_token_loss": rec["stages"][1]["val_metrics"]["val/svq_token_loss"],
                   "constant_guess_token_loss": 0.11}
        return {**codebook.describe(rec), **figures}

    entries = codebook.update(tmp_path, measure)
    assert sorted(measured) == ["b0", "f0", "f1", "f2", "l0", "l1"]
    assert {e["key"]: e["epochs"] for e in entries} == {"f0": recipe, "f1": recipe, "f2": recipe, "l0": longer,
                                                        "l1": longer, "b0": recipe}
    rows = codebook.table(entries).splitlines()[2:]
    assert rows == [
        (f"| `tokenizer` (focal, eq. 6, restarts every 20 steps, {recipe} epochs) | 60.0 ± 10.0 | 10.0 ± 0.0 "
         "| 0.1100 ± 0.0100 | 0.1100 ± 0.0000 | 3 |"),
        (f"| `tokenizer` (focal, eq. 6, restarts every 20 steps, {longer} epochs) | 55.0 ± 7.1 | 10.0 ± 0.0 "
         "| 0.1050 ± 0.0071 | 0.1100 ± 0.0000 | 2 |"),
        f"| `tokenizer_bce` (BCE, restarts every 20 steps, {recipe} epochs) | 50.0 | 10.0 | 0.1000 | 0.1100 | 1 |",
    ]
    assert json.loads((tmp_path / "codebook.json").read_text())["entries"] == entries
    measured.clear()
    assert codebook.update(tmp_path, measure) == entries and measured == []  # kept by key, not measured again


def test_the_word_loss_variants_say_their_reduction_and_weight(tmp_path):
    codebook = load_experiment("evilm_codebook")
    records = [record("s0", "tokenizer_sum", 0, "evilm/tiny/tokenizer_sum"),
               record("w0", "tokenizer_weight10", 0, "evilm/tiny/tokenizer_weight10")]
    (tmp_path / "sweep.json").write_text(json.dumps({"records": records}))
    entries = codebook.update(tmp_path, lambda rec, out: {**codebook.describe(rec), "utilisation": 0.5,
                                                          "perplexity": 10.0})  # fmt: skip
    assert [(e["word_reduction"], e["word_weight"]) for e in entries] == [("sum", 1.0), ("mean", 10.0)]
    epochs = load_recipe(find_recipe("evilm/tiny/tokenizer_sum"))["trainer"]["max_epochs"]
    labels = [row.split(" | ")[0] for row in codebook.table(entries).splitlines()[2:]]
    assert labels == [f"| `tokenizer_sum` (focal, eq. 6, summed over the words, restarts every 20 steps, {epochs} epochs)",
                      f"| `tokenizer_weight10` (focal, eq. 6, weighted 10, restarts every 20 steps, {epochs} epochs)"]


def test_converted_figures_stay_until_a_measured_run_replaces_them(tmp_path):
    codebook = load_experiment("evilm_codebook")
    old = {"key": "legacy-1", "run": None, "seed": 0, "tokenizer": "tokenizer_bce", "epochs": 2, "word_loss": "bce",
           "restart_every": 20, "utilisation": 0.8, "perplexity": 20.0, "val_token_loss": 0.17,
           "constant_guess_token_loss": 0.168, "converted_from": "experiments/results/evilm_tiny.json"}
    (tmp_path / "codebook.json").write_text(json.dumps({"entries": [old, dict(old, key="legacy-2", seed=1)]}))
    (tmp_path / "sweep.json").write_text(json.dumps({"records": []}))
    assert [e["key"] for e in codebook.update(tmp_path, None)] == ["legacy-1", "legacy-2"]
    (tmp_path / "sweep.json").write_text(json.dumps({"records": [record("b0", "bce", 0, "evilm/tiny/tokenizer_bce")]}))
    entries = codebook.update(tmp_path, lambda rec, out: {**codebook.describe(rec), "utilisation": 0.5})
    assert [e["key"] for e in entries] == ["b0", "legacy-2"]  # seed 0 measured now; seed 1 still converted
