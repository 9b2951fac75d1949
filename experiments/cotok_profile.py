"""Profile the co-tokenization recipes and what the blog's unknowns change; write the tables.

The blog gives the model's cost, "67 giga-FLOPs", but not the X3D size of each stream, the T5 size
or the number of tokens, nor whether a FLOP is a multiply-add (the video papers' count, which ``vqa
profile`` reports as GMACs) or half of one. This script profiles the smallest configuration
consistent with the blog (``recipes/cotok/finetune_msrvtt_qa.yaml``), the configuration closest to
67 (``recipes/cotok/finetune_msrvtt_qa_67gmacs.yaml``) and variants that change one unknown at a
time (``vqa profile``'s counter, fake tensors, one sample), and the recipes of ``recipes/cotok/``,
and writes both tables between markers in ``docs/parts/cotok.md``::

    python experiments/cotok_profile.py                      # rewrite the tables in docs/parts/cotok.md
    python experiments/cotok_profile.py --print              # only print them

Models are built on the ``meta`` device (no weights allocated), so T5-3B-sized variants profile
in seconds and in little memory; the counts are those of ``vqa profile`` (tested equal in
``tests/recipes/test_paper_scale.py``). The recipes name ``t5-base`` and ``t5-large``: their
``config.json`` and tokenizer must be in the Hugging Face cache (``hf download t5-base config.json
spiece.model tokenizer.json``, the same for ``t5-large``); the question's token count is the
tokenizer's.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from vqa_components.cli import NO_INIT, release, run_cli
from vqa_components.packaged_recipes import load_recipe
from vqa_components.profiler import ProfileReport, profile_model
from vqa_components.registry import import_builtin_parts

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = ROOT / "recipes" / "cotok" / "finetune_msrvtt_qa.yaml"
CLOSEST = ROOT / "recipes" / "cotok" / "finetune_msrvtt_qa_67gmacs.yaml"
DOC = ROOT / "docs" / "parts" / "cotok.md"
BLOG_GMACS = 67.0

#: T5 v1.0 sizes (Raffel et al., 2020, table 14; the published configs): d_model, layers, heads, d_kv, d_ff
T5_SIZES = {
    "small": {"d_model": 512, "num_layers": 6, "num_heads": 8, "d_kv": 64, "d_ff": 2048},
    "base": {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_kv": 64, "d_ff": 3072},
    "large": {"d_model": 1024, "num_layers": 24, "num_heads": 16, "d_kv": 64, "d_ff": 4096},
    "3B": {"d_model": 1024, "num_layers": 24, "num_heads": 32, "d_kv": 128, "d_ff": 16384},
}
#: X3D per stream: the XS/S/M network (one network, three designed inputs), L, and the XL shape
#: (width 2.9, depth 5.0: 11.1M parameters with a 400-class head, the published 11.0M; not a preset)
X3D_SIZES = {
    "XS/S/M": {"preset": "m"},
    "L": {"preset": "l"},
    "XL shape": {"preset": "l", "width_factor": 2.9},
}
#: a 40-token question (the T5 encoder's max_length) instead of the example's 9 tokens
LONG_QUESTION = " ".join(["what does the man in the red shirt do with the ball after he walks"] * 4)


def _meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, tuple):
        return tuple(_meta(v) for v in value)
    return value


def profile_config(cfg: dict, question: str | None = None) -> ProfileReport:
    """``vqa profile`` of a recipe dict, the model built on the meta device."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    try:
        with torch.device("meta"):
            cli = run_cli(["--config", f.name, *NO_INIT], run=False)
        model, dm = cli.model, cli.datamodule
        batch = {k: _meta(v) for k, v in dm.example_batch(batch_size=1).items()}
        release(cli)
        if question is not None:
            batch["question"] = [question]
        return profile_model(model, batch)
    finally:
        Path(f.name).unlink()


def with_t5(cfg: dict, size: str) -> dict:
    cfg = copy.deepcopy(cfg)
    t5 = T5_SIZES[size]
    for part in ("text_encoder", "head"):  # T5 of this size, random, with t5-base's SentencePiece vocabulary
        cfg["model"][part].pop("pretrained_path", None)
        cfg["model"][part].update(config={**t5, "vocab_size": 32128}, tokenizer_path="t5-base")
    cfg["model"]["head"]["in_dim"] = t5["d_model"]
    fusion = cfg["model"]["fusion"]
    fusion.update(text_dim=t5["d_model"], dim=t5["d_model"], num_heads=t5["d_model"] // 64)
    return cfg


def with_x3d(cfg: dict, size: str) -> dict:
    cfg = copy.deepcopy(cfg)
    streams = cfg["model"]["backbone"]["backbones"]
    cfg["model"]["backbone"]["backbones"] = [{"name": "x3d", **X3D_SIZES[size]} for _ in streams]
    from vqa_components.backbones.x3d import X3D

    with torch.device("meta"):  # the conv5 width follows the width factor
        probe = X3D(**X3D_SIZES[size])
    cfg["model"]["fusion"]["video_dim"] = [probe.feature_dim] * len(streams)
    return cfg


def with_fusion(cfg: dict, **kwargs: Any) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["model"]["fusion"].update(kwargs)
    return cfg


def row(label: str, r: ProfileReport) -> str:
    p = r.per_part
    g = {k: p[k]["gmacs"] if k in p else 0.0 for k in ("backbone", "text_encoder", "fusion", "head")}
    return (
        f"| {label} | {r.params / 1e6:.1f} | {g['backbone']:.2f} | {g['text_encoder']:.2f} | {g['fusion']:.2f} "
        f"| {g['head']:.2f} | **{r.gmacs:.2f}** | {r.gmacs / BLOG_GMACS:.2f} | {2 * r.gmacs / BLOG_GMACS:.2f} |"
    )


HEADER = (
    "| configuration | params (M) | backbone | T5 encoder | co-tokenizer | decoder (1 token) | GMACs | "
    "GMACs ÷ 67 | 2 × GMACs ÷ 67 |\n|---|---|---|---|---|---|---|---|---|"
)


def sensitivity() -> str:
    base, closest = yaml.safe_load(SMALLEST.read_text()), yaml.safe_load(CLOSEST.read_text())
    lines = [HEADER]

    def add(label: str, cfg: dict, question: str | None = None) -> None:
        lines.append(row(label, profile_config(cfg, question)))
        print(lines[-1], flush=True)

    tokens = profile_config(base).text_tokens[0]
    add("**smallest** (`finetune_msrvtt_qa.yaml`): X3D XS/S/M network ×3, T5-base, K = 8, I = 3", base)
    for size in ("L", "XL shape"):
        add(f"X3D {size} ×3", with_x3d(base, size))
    for size in ("small", "large", "3B"):
        add(f"T5-{size}", with_t5(base, size))
    for k in (16, 32):
        add(f"K = {k} tokens", with_fusion(base, num_tokens=k))
    for i in (1, 2):
        add(f"I = {i} iteration{'s' if i > 1 else ''}", with_fusion(base, num_iterations=i))
    add(f"40-token question ({tokens} in the example)", base, LONG_QUESTION)
    add(
        "**closest to 67** (`finetune_msrvtt_qa_67gmacs.yaml`): X3D XL shape ×3, T5-large, K = 32, I = 3",
        closest,
    )
    add("closest to 67, 40-token question", closest, LONG_QUESTION)
    big = with_fusion(with_t5(with_x3d(base, "XL shape"), "3B"), num_tokens=32)
    add("T5-3B, X3D XL shape ×3, K = 32", big)
    add("T5-3B, X3D XL shape ×3, K = 32, 40-token question", big, LONG_QUESTION)
    return "\n".join(lines)


def recipes() -> str:
    lines = [
        "| recipe | params (M) | backbone GMACs | text GMACs | fusion GMACs | head GMACs | GMACs |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe in sorted((ROOT / "recipes" / "cotok").rglob("*.yaml")):
        r = profile_config(load_recipe(recipe))  # a base chain merged in
        p = r.per_part
        cells = [
            f"{p[k]['gmacs']:.4g}" if k in p else "–" for k in ("backbone", "text_encoder", "fusion", "head")
        ]
        lines.append(
            f"| `{recipe.relative_to(ROOT).as_posix()}` | {r.params / 1e6:.2f} | "
            + " | ".join(cells)
            + f" | {r.gmacs:.4g} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}: start", f"<!-- {name}: end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{DOC}: no '{start} ... -->' / '{end}' markers")
    head = text[: text.index(start)]
    tail = text[text.index(end) :]
    stamp = f"{start}, written by experiments/cotok_profile.py on {datetime.now(timezone.utc).date()} -->\n"
    return head + stamp + body + "\n" + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the tables, leave the doc as it is")
    args = parser.parse_args()
    import_builtin_parts()
    sens, rec = sensitivity(), recipes()
    if args.print:
        print(sens, rec, sep="\n\n")
        return 0
    text = DOC.read_text()
    text = replace_block(text, "cotok_profile_sensitivity", sens)
    text = replace_block(text, "cotok_profile_recipes", rec)
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
