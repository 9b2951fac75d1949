"""``sweep.json``, the table and the plot of a sweep.

``sweep.json`` holds one record per run (its key, seed, row, every stage's exit status, wall time,
commands and metrics, the machine and versions). Records are merged one at a time under a file lock,
so that the threads of ``vqa sweep --parallel`` and SLURM jobs on other nodes (a shared file system)
can all write to it; after each merge ``table.md`` is written again.

The table has a row per run (and override), a column for the metric (``test/acc``) and one per
family (every ``test/acc_<family>`` the runs report, or the sweep file's ``table.columns``), each
cell ``mean ± sample std`` over the seeds in percent, and the number of seeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = "sweep.json"
TABLE = "table.md"
PLOT = "plot.png"


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """An exclusive lock on ``<out>/.sweep.lock`` (``fcntl``; a no-op where it does not exist)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".sweep.lock").open("w") as f:
        try:
            import fcntl
        except ImportError:  # Windows: one writer at a time is the user's care
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load(out: Path) -> dict[str, Any]:
    file = out / RESULTS
    return json.loads(file.read_text()) if file.is_file() else {"records": []}


def _write(out: Path, data: dict[str, Any]) -> None:
    data["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data["records"] = sorted(data["records"], key=lambda r: (r["order"], r["seed"]))
    tmp = out / f".{RESULTS}.{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out / RESULTS)
    (out / TABLE).write_text(table_page(data))


def merge_record(out: Path, record: dict[str, Any]) -> None:
    """Add ``record`` to ``sweep.json`` (replacing one of the same key) and rewrite the table."""
    with locked(out):
        data = load(out)
        data["records"] = [r for r in data["records"] if r["key"] != record["key"]] + [record]
        _write(out, data)


def keep_records(out: Path, keep, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Drop the records for which ``keep(record)`` is false (a changed recipe, a removed run), set the
    sweep's ``meta`` (name, file, table options), and return the finished records that remain."""
    with locked(out):
        data = load(out)
        data.update(meta)
        data["records"] = [r for r in data["records"] if keep(r)]
        _write(out, data)
        return [r for r in data["records"] if finished(r)]


def finished(record: dict[str, Any]) -> bool:
    return record.get("returncode") == 0 and record.get("metrics") is not None


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sample std`` of ``values * scale`` with ``digits`` decimals (one value: no spread)."""
    if not values:
        return "n/a"
    mean = f"{scale * statistics.mean(values):.{digits}f}"
    return mean if len(values) < 2 else f"{mean} ± {scale * statistics.stdev(values):.{digits}f}"


def columns(records: list[dict[str, Any]], options: dict[str, Any]) -> list[tuple[str, str]]:
    """(header, metric key) of the table: ``overall`` then each family."""
    metric = options.get("metric", "test/acc")
    families = options.get("columns")
    if families is None:  # every <metric>_<family> the runs report, in the order first seen
        families = []
        for r in records:
            families += [k[len(metric) + 1:] for k in r["metrics"] if k.startswith(metric + "_")
                         and k[len(metric) + 1:] not in families]
    return [("overall", metric)] + [(f, f"{metric}_{f}") for f in families]


def rows(records: list[dict[str, Any]], options: dict[str, Any]) -> list[tuple[str, list[list[float]], int]]:
    """(row, the values of each column over its seeds, number of seeds), in the sweep file's order; runs
    that report no ``metric`` (a chain that tests nothing) have no row."""
    done = [r for r in records if finished(r) and options.get("metric", "test/acc") in r["metrics"]]
    cols = columns(done, options)
    out = []
    for row in sorted({r["row"]: r["order"] for r in done}.items(), key=lambda kv: kv[1]):
        runs = [r for r in done if r["row"] == row[0]]
        out.append((row[0], [[r["metrics"][key] for r in runs if key in r["metrics"]] for _, key in cols],
                    len(runs)))
    return out


def table(records: list[dict[str, Any]], options: dict[str, Any] | None = None) -> str:
    """The Markdown table of the finished records."""
    options = options or {}
    done = [r for r in records if finished(r) and options.get("metric", "test/acc") in r["metrics"]]
    cols = columns(done, options)
    scale, digits = options.get("scale", 100.0), options.get("digits", 1)
    lines = ["| model | " + " | ".join(h for h, _ in cols) + " | seeds |", "|---|" + "---|" * (len(cols) + 1)]
    for row, values, seeds in rows(done, options):
        lines.append(f"| {row} | " + " | ".join(mean_std(v, scale, digits) for v in values) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def table_page(data: dict[str, Any]) -> str:
    """``table.md``: a comment saying what wrote it from what, then the table."""
    records = data["records"]
    done = [r for r in records if finished(r)]
    devices = sorted({(r.get("machine") or {}).get("gpu") or "cpu" for r in done})
    versions = sorted({str(r["benchmark_version"]) for r in done if r.get("benchmark_version") is not None})
    extra = sorted({" ".join(r["args"]) for r in done if r.get("args")})
    dates = sorted(str(r.get("date", ""))[:10] for r in done if r.get("date"))
    ran = f" (run {dates[0]}" + (f" to {dates[-1]})" if dates[-1] != dates[0] else ")") if dates else ""
    note = (f"<!-- written by vqa sweep {data.get('file') or data.get('sweep', '')} on "
            f"{datetime.now(timezone.utc).date()} from {len(done)} finished runs{ran}; "
            f"devices: {', '.join(devices) or '-'}"
            + (f"; synthetic_vqa generator version {', '.join(versions)}" if versions else "")
            + (f"; arguments: {' | '.join(extra)}" if extra else "") + " -->\n")
    return note + table(records, data.get("table"))


def plot(data: dict[str, Any], path: Path) -> bool:
    """A bar per row in each column with its standard deviation over seeds; False without matplotlib
    or without a row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    options = data.get("table") or {}
    done = [r for r in data["records"] if finished(r)]
    cols = columns(done, options)
    table_rows = rows(done, options)
    if not table_rows:
        return False
    scale = options.get("scale", 100.0)
    fig, ax = plt.subplots(figsize=(min(12.0, 3.0 + 0.2 * len(cols) * len(table_rows)), 3.2 + 0.18 * len(table_rows)))
    width = 0.8 / max(1, len(table_rows))
    for i, (row, values, _) in enumerate(table_rows):
        means = [scale * statistics.mean(v) if v else float("nan") for v in values]
        stds = [scale * statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.bar([c + (i - (len(table_rows) - 1) / 2) * width for c in range(len(cols))], means, width, yerr=stds,
               capsize=2, label=row)
    ax.set_xticks(range(len(cols)), [h for h, _ in cols])
    ax.set_ylabel(options.get("metric", "test/acc") + (" (%)" if scale == 100.0 else ""))
    ax.set_title(f"{data.get('sweep', '')}: mean and std over seeds")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
