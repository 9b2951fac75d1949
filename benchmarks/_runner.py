"""The runner behind ``python -m benchmarks``: finds the benchmarks, runs them, and writes
``docs/benchmarks.md`` from their results files.

A benchmark is any ``benchmarks/<name>.py`` (no leading underscore) that defines
``main(argv: list[str] | None = None) -> int``; it is found by reading the file (no import), so a new
file joins the suite without a change here. Its module docstring's first line is what ``--list``
shows. It writes ``<results>/<name>.json`` (and a PNG beside it); if it defines ``markdown(result)``,
``--docs`` puts that text, under a line saying where and when the figures were taken
(``describe(result)`` if the module has one, else ``_report.describe``), between the markers
``<!-- benchmark:<name> -->`` and ``<!-- /benchmark:<name> -->`` of ``docs/benchmarks.md``. Text
outside the markers is kept; a benchmark without markers yet gets a section at the end.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
#: the order of a full run: the cheap, machine-describing ones first, the long training runs last;
#: benchmarks not named here run after these, in alphabetical order
ORDER = ["step_flops", "fusion_cost", "cotok_cost", "decoding", "data_pipeline", "streaming", "feature_cache",
         "ask", "training_speed", "gpu_paper_scale"]
USAGE = """\
python -m benchmarks                    run every benchmark (in the order of --list)
python -m benchmarks --quick            the same, each one short (smoke test)
python -m benchmarks --threads 1        the same, one torch thread each (a machine loaded by other work)
python -m benchmarks NAME [ARGS...]     one benchmark; ARGS go to it (NAME --help lists them)
python -m benchmarks --list             the benchmarks, one line each
python -m benchmarks --docs             rewrite docs/benchmarks.md from the results files (no run)"""


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: Path
    summary: str


def discover(folder: Path = HERE) -> list[Benchmark]:
    """Every ``<folder>/<name>.py`` with a top-level ``main``, in :data:`ORDER`, then by name."""
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            continue
        doc = ast.get_docstring(tree) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        found.append(Benchmark(path.stem, path, summary))
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda b: (rank.get(b.name, len(ORDER)), b.name))


def load(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


# ------------------------------------------------------------------ the page


def block(bench: Benchmark, results: Path) -> str:
    """What goes between a benchmark's markers: where and when, then its tables."""
    file = results / f"{bench.name}.json"
    if not file.is_file():
        body = f"Not run yet: `python -m benchmarks {bench.name}`.\n"
    else:
        result = json.loads(file.read_text())
        module = load(bench.name)
        describe = getattr(module, "describe", None) or load("_report").describe
        render = getattr(module, "markdown", None)
        table = render(result) if render else "(this benchmark writes no table; see its results file)\n"
        body = (f"{describe(result)} Raw figures: [benchmarks/results/{bench.name}.json]"
                f"(../benchmarks/results/{bench.name}.json)"
                + (f", plot: [{bench.name}.png](../benchmarks/results/{bench.name}.png)"
                   if file.with_suffix(".png").is_file() else "") + ".\n\n" + table)
    return f"<!-- benchmark:{bench.name} -->\n{body.rstrip()}\n<!-- /benchmark:{bench.name} -->"


def render(page: str, results: Path = RESULTS, benchmarks: list[Benchmark] | None = None) -> str:
    """``page`` with every benchmark's block rewritten from ``results`` (sections added for new ones)."""
    for bench in benchmarks if benchmarks is not None else discover():
        new = block(bench, results)
        pattern = re.compile(rf"<!-- benchmark:{re.escape(bench.name)} -->.*?<!-- /benchmark:{re.escape(bench.name)} -->",
                             re.DOTALL)
        if pattern.search(page):
            page = pattern.sub(lambda _m, text=new: text, page, count=1)
        else:
            page = page.rstrip("\n") + f"\n\n## `{bench.name}`\n\n{bench.summary}\n\n{new}\n"
    return page


def write_docs(results: Path = RESULTS, check: bool = False) -> int:
    old = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else "# Benchmarks\n"
    new = render(old, results)
    if check:
        if new != old:
            print(f"{DOCS.relative_to(ROOT)} is out of date with the results files: python -m benchmarks --docs")
            return 1
        print(f"{DOCS.relative_to(ROOT)} is up to date")
        return 0
    if new != old:
        DOCS.write_text(new, encoding="utf-8")
        print(f"written {DOCS.relative_to(ROOT)}")
    else:
        print(f"{DOCS.relative_to(ROOT)} unchanged")
    return 0


# ------------------------------------------------------------------ running


def run_all(quick: bool, results: Path | None, threads: int | None = None) -> int:
    passed = ["--quick"] if quick else []
    if results is not None:
        passed += ["--results", str(results)]
    if threads:
        passed += ["--threads", str(threads)]
    times: dict[str, tuple[int, float]] = {}
    for bench in discover():
        print(f"\n=== {bench.name}: {bench.summary}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(bench.path), *passed], cwd=ROOT, check=False).returncode
        times[bench.name] = (code, time.perf_counter() - start)
    print("\nbenchmark            status  minutes")
    for name, (code, seconds) in times.items():
        print(f"{name:20s} {'ok' if code == 0 else f'exit {code}':7s} {seconds / 60:7.1f}")
    print(f"{'total':20s} {'':7s} {sum(s for _, s in times.values()) / 60:7.1f}")
    if results is None or Path(results).resolve() == RESULTS.resolve():
        write_docs()
    return 0 if all(code == 0 for code, _ in times.values()) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {b.name for b in discover()}
    if argv and argv[0] in names:  # one benchmark: everything after its name is its own
        return int(load(argv[0]).main(argv[1:]) or 0)
    p = argparse.ArgumentParser(prog="python -m benchmarks", usage=USAGE, description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="the benchmarks, one line each")
    p.add_argument("--quick", action="store_true", help="each benchmark short (smoke test)")
    p.add_argument("--results", type=Path, help=f"folder of the results files (default {RESULTS})")
    p.add_argument("--threads", type=int, help="torch threads in each benchmark (default: torch's, one per core)")
    p.add_argument("--docs", action="store_true", help="rewrite docs/benchmarks.md from the results files")
    p.add_argument("--check", action="store_true", help="with --docs: fail if the page is out of date, write nothing")
    args, rest = p.parse_known_args(argv)
    if rest:
        import difflib

        close = difflib.get_close_matches(rest[0], sorted(names), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        print(f"unknown benchmark or option {rest[0]!r}{hint} (benchmarks: {', '.join(sorted(names))})",
              file=sys.stderr)
        return 2
    if args.list:
        width = max(len(n) for n in names)
        for bench in discover():
            print(f"{bench.name:{width}s}  {bench.summary}")
        return 0
    if args.docs:
        return write_docs(args.results or RESULTS, check=args.check)
    return run_all(args.quick, args.results, args.threads)
