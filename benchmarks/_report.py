"""What the benchmark scripts share to report a run: the machine, the results file, the figure and
the provenance line of the markdown table (``decoding.py``, ``training_speed.py``).

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
``import _report``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's vector-instruction flags (``avx*``, ``amx*``), sorted."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in flags if f.startswith(("avx", "amx")))


def machine() -> dict[str, Any]:
    """When and where the figures were taken: date (UTC), CPU, cores, torch and Python versions."""
    import torch

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def provenance(script: str, result: dict[str, Any], details: str) -> str:
    """The HTML comment that heads a results table: which script wrote it, when, on what."""
    return (
        f"<!-- written by benchmarks/{script} on {result['date']}: {result['cpu']}, "
        f"{result['cpu_count']} cores, {details} -->"
    )


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
