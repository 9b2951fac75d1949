"""The repository's experiment scripts know their recipes."""

from __future__ import annotations

from helpers import load_experiment


def test_sweep_sets_name_their_recipes():
    sweep = load_experiment("seed_sweep")
    for name, (folder, labels, results, table) in sweep.SETS.items():
        assert set(labels) <= {p.stem for p in folder.glob("*.yaml")}, name  # every label names a recipe
        assert results.startswith("experiments/results/") and table.startswith("docs/results/"), name
    folder, labels, _, _ = sweep.SETS["cotok_tiny"]
    assert set(labels) == {p.stem for p in folder.glob("*.yaml")}  # and every recipe is swept


def test_evilm_chain_keeps_longer_tokenizers_apart():
    """A chain whose stage 1 ran longer (``--tokenizer-epochs``) gets its own table row; older records
    without the field ran their recipe's ``max_epochs``; chains without a stage 1 have no epochs."""
    chain = load_experiment("evilm_chain")
    recipe = chain.recipe_epochs("tokenizer_bce")
    old = {"seed": 0, "pretrain": "pretrain", "tokenizer": "tokenizer_bce"}
    longer = dict(old, tokenizer_epochs=recipe + 4)
    assert chain.tokenizer_epochs(old) == recipe
    assert chain.tokenizer_epochs({"seed": 0, "pretrain": "none", "tokenizer": "tokenizer"}) is None
    name = chain.LABELS[("pretrain", "tokenizer_bce")]
    assert chain.label(old) == name
    assert chain.label(longer) == name + f", tokenizer trained {recipe + 4} epochs"
