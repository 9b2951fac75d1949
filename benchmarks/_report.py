"""What the benchmarks share to report a run: the machine (CPU, its vector features, the library
versions), the command-line options every benchmark takes, the results file and its figure, and the
line that says where and when a table's figures were taken.

Each benchmark imports this module both ways it can be run::

    try:
        from benchmarks import _report      # python -m benchmarks NAME
    except ImportError:
        import _report                      # python benchmarks/NAME.py (this folder is on sys.path)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: the distributions whose versions every results file records (distribution name: key)
VERSIONED = {
    "torch": "torch",
    "lightning": "lightning",
    "transformers": "transformers",
    "timm": "timm",
    "open_clip_torch": "open_clip",
    "av": "av",
    "numpy": "numpy",
    "vqa-components": "vqa_components",
}
#: CPU flags worth recording: the vector and matrix units the kernels pick from
FLAG_PREFIXES = ("avx", "amx", "fma", "f16c")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix flags (``avx*``, ``amx*``, ``fma``, ``f16c``), sorted."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in flags if f.startswith(FLAG_PREFIXES))


def versions() -> dict[str, str | None]:
    """Installed versions (``None``: not installed), read from the package metadata without importing."""
    found: dict[str, str | None] = {}
    for dist, key in VERSIONED.items():
        try:
            found[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[key] = None
    return found


def machine() -> dict[str, Any]:
    """When and where the figures were taken: date (UTC), CPU, its flags, cores, threads, load, versions.

    The flat keys ``date``, ``cpu``, ``cpu_count``, ``torch`` and ``python`` are those of the older
    results files, so that every table writer reads both."""
    import torch

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "versions": versions(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe(result: dict[str, Any]) -> str:
    """One line: the date and the machine of a results file, whatever its age (older files kept the
    machine under ``device``, or had no flags or versions)."""
    device = result.get("device") if isinstance(result.get("device"), dict) else {}
    cpu = result.get("cpu") or device.get("processor") or "CPU not recorded"
    cores = result.get("cpu_count") or device.get("cpu_count")
    torch_version = result.get("torch") or device.get("torch")
    parts = [f"{cpu}, {cores} cores" if cores else cpu]
    if result.get("torch_threads"):
        parts.append(f"{result['torch_threads']} torch thread{'s' if result['torch_threads'] > 1 else ''}")
    if result.get("gpu"):
        parts.append(str(result["gpu"]))
    if result.get("cpu_flags"):
        shown = [f for f in result["cpu_flags"] if f.startswith(("avx512_bf16", "amx_bf16", "avx2", "avx512f"))]
        parts.append("flags " + " ".join(shown or result["cpu_flags"]))
    libs = result.get("versions") or {}
    shown_libs = {k: v for k, v in libs.items() if k in ("torch", "lightning", "av") and v}
    if shown_libs:
        parts.append(", ".join(f"{k} {v}" for k, v in shown_libs.items()))
    elif torch_version:
        parts.append(f"torch {torch_version}")
    load = result.get("load_average")
    if isinstance(load, list) and load:
        parts.append(f"load average {load[0]:.1f} at the start")
    elif isinstance(load, dict) and load.get("start"):
        parts.append(f"load average {load['start'][0]:.1f} at the start")
    date = str(result.get("date", "date not recorded"))[:10]
    kind = "**quick run** (a smoke test: not figures to quote)" if result.get("quick") else "run"
    note = f"; note: {result['note']}" if result.get("note") else ""
    return f"Figures of a {kind} on {date}: {'; '.join(parts)}{note}."


def provenance(script: str, result: dict[str, Any], details: str) -> str:
    """The HTML comment that heads a results table: which script wrote it, when, on what."""
    return (
        f"<!-- written by benchmarks/{script} on {result['date']}: {result['cpu']}, "
        f"{result['cpu_count']} cores, {details} -->"
    )


class _Parser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "threads", None):
            import torch

            torch.set_num_threads(parsed.threads)
        return parsed


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--quick``, ``--results DIR`` and
    ``--threads N`` (torch's threads in this process; default torch's own choice, one per core)."""
    caller = Path(sys._getframe(1).f_code.co_filename).stem  # the benchmark's file: its name
    p = _Parser(
        prog=f"python -m benchmarks {caller}",
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a short run (smoke test): seconds to a minute")
    p.add_argument(
        "--results", type=Path, default=RESULTS, help=f"folder of the results files (default {RESULTS})"
    )
    p.add_argument(
        "--threads", type=int, help="torch threads in this process (default: torch's, one per core); on a "
        "machine loaded by other work, 1 avoids the threads waiting for each other"
    )
    return p


def default_results(folder: Path) -> bool:
    """Whether ``folder`` is the committed results folder (tables quoted elsewhere are then rewritten)."""
    return Path(folder).resolve() == RESULTS.resolve()


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def plot_title(result: dict[str, Any]) -> str:
    quick = ", quick run" if result.get("quick") else ""
    return f"{result.get('cpu', '')} ({result.get('cpu_count')} cores), {str(result.get('date', ''))[:10]}{quick}"


@contextmanager
def panels(count: int, width: float, height: float, title: str, path: Path) -> Iterator[list[Any]]:
    """One row of ``count`` matplotlib axes (no display needed); on exit the figure gets ``title``
    and is saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    yield list(axes[0])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def finish(result: dict[str, Any], results: Path, name: str, plot: Any) -> int:
    """Write ``results/NAME.json`` (the load average at the end added) and ``NAME.png`` (``plot(result,
    path)``), say so, and return the exit status 0: the last lines of every benchmark's ``main``."""
    result["load_average_end"] = machine()["load_average"]
    out = results / f"{name}.json"
    write_json(result, out)
    plot(result, out.with_suffix(".png"))
    print(f"written {out} and {out.with_suffix('.png')}")
    return 0
