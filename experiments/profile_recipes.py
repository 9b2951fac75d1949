"""Profile recipes with ``vqa profile`` and write their figures as a Markdown table.

    python experiments/profile_recipes.py recipes/videodistill --out docs/results/videodistill_profile.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from vqa_components.cli import main as vqa

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- written by experiments/profile_recipes.py"


def profile(recipe: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = vqa(["profile", "--config", str(recipe)])
    if code:
        raise SystemExit(f"vqa profile failed for {recipe}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    recipes = sorted(args.folder.resolve().rglob("*.yaml"))
    lines = [
        f"{MARKER} on {datetime.now(timezone.utc).date()} -->",
        "| recipe | params (M) | trainable (M) | GMACs | backbone GMACs | text GMACs | sampler GMACs | fusion GMACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe in recipes:
        r = profile(recipe)
        parts = r["per_part"]

        def g(name: str, parts: dict = parts) -> str:
            return f"{parts[name]['gmacs']:.4g}" if name in parts else "–"

        lines.append(
            f"| `{recipe.relative_to(ROOT).as_posix()}` | {r['params'] / 1e6:.1f} | {r['trainable_params'] / 1e6:.1f} "
            f"| {r['gmacs']:.5g} | {g('backbone')} | {g('text_encoder')} | {g('sampler')} | {g('fusion')} |"
        )
        print(lines[-1], flush=True)
    # keep the prose above the table (everything before the marker) when the file exists
    head = ""
    if args.out.is_file():
        text = args.out.read_text()
        head = text[: text.find(MARKER)] if MARKER in text else ""
    args.out.write_text(head + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
