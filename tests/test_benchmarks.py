"""The benchmark suite's runner (``python -m benchmarks``) and its page: every ``benchmarks/<name>.py``
with a ``main`` is listed and run, and ``docs/benchmarks.md`` is what ``--docs`` writes from the
committed results files (a page out of date with its figures fails here).

The slow tier runs each benchmark with ``--quick`` into a temporary results folder; those that train
tiny recipes, start ``vqa`` processes or decode 720p clips (a minute or more each on 2 cores) also need
``VQA_RUN_BENCHMARKS=1``.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT))  # the repository root is not on pytest's path
from benchmarks import _runner

#: benchmarks whose quick run trains recipes, starts `vqa` processes or decodes 720p: a minute or more each
HEAVY = {"step_flops", "data_pipeline", "training_speed", "ask", "feature_cache", "streaming", "decoding"}
RUN_HEAVY = os.environ.get("VQA_RUN_BENCHMARKS", "").lower() in ("1", "true", "yes")


def modules_with_main() -> set[str]:
    found = set()
    for path in (ROOT / "benchmarks").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if not path.name.startswith("_") and mains:
            assert [a.arg for a in mains[0].args.args] == ["argv"], f"{path.name}: main(argv: list[str] | None = None)"
            found.add(path.stem)
    return found


def test_the_runner_lists_every_benchmark_module_with_its_one_line_summary():
    names = [b.name for b in _runner.discover()]
    assert set(names) == modules_with_main() and len(names) == len(set(names))
    assert {"step_flops", "fusion_cost", "data_pipeline", "gpu_paper_scale", "decoding", "training_speed",
            "feature_cache", "cotok_cost"} <= set(names)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _runner.main(["--list"]) == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == names
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines), "every benchmark says what it measures"


def test_an_unknown_benchmark_name_fails_with_the_closest_names(capsys):
    assert _runner.main(["fusion_cots"]) == 2
    err = capsys.readouterr().err
    assert "fusion_cost" in err and "\n" == err[-1] and err.count("\n") == 1


def test_a_new_benchmark_file_joins_the_list_and_the_page(tmp_path):
    (tmp_path / "_helper.py").write_text("def main(argv=None):\n    return 0\n")
    (tmp_path / "notes.py").write_text('"""Not a benchmark: no main."""\n')
    (tmp_path / "zz_new.py").write_text('"""Speed of something new.\n\nMore."""\n\ndef main(argv=None):\n    return 0\n')
    found = _runner.discover(tmp_path)
    assert [b.name for b in found] == ["zz_new"] and found[0].summary == "Speed of something new."
    page = _runner.render("# Benchmarks\n", tmp_path / "results", found)
    assert "## `zz_new`" in page and "<!-- benchmark:zz_new -->\nNot run yet: `python -m benchmarks zz_new`." in page
    assert _runner.render(page, tmp_path / "results", found) == page  # rewriting a block keeps the page


def test_docs_benchmarks_md_is_what_the_results_files_give():
    page = _runner.DOCS.read_text(encoding="utf-8")
    assert _runner.render(page) == page, "docs/benchmarks.md is out of date: python -m benchmarks --docs"
    for bench in _runner.discover():
        assert f"<!-- benchmark:{bench.name} -->" in page


@pytest.mark.slow
@pytest.mark.parametrize("name", [b.name for b in _runner.discover()])
def test_each_benchmark_runs_quick_into_a_results_folder(name, tmp_path):
    if name in HEAVY and not RUN_HEAVY:
        pytest.skip("trains recipes or starts vqa processes: set VQA_RUN_BENCHMARKS=1")
    done = subprocess.run([sys.executable, "-m", "benchmarks", name, "--quick", "--results", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{name}.json").read_text())
    module = _runner.load(name)
    if result.get("recipes") != {}:  # gpu_paper_scale without CUDA writes only "last run on a GPU: never"
        assert result["quick"] is True and result["versions"]["torch"] and "cpu_flags" in result
        assert (tmp_path / f"{name}.png").is_file()
    assert module.markdown(result).strip()
