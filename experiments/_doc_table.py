"""Write a script's table into a docs page, between its ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->`` marks."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path


def write_between_marks(doc: Path, name: str, text: str) -> None:
    """Replace what ``doc`` holds between ``name``'s marks with a dated line and ``text``."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    page = doc.read_text()
    stamp = f"<!-- written by experiments/{name}.py on {datetime.now(timezone.utc).date()} -->\n"
    start, stop = page.index(begin) + len(begin), page.index(end)
    doc.write_text(page[:start] + "\n" + stamp + text + page[stop:])
    print(f"written {doc}")
