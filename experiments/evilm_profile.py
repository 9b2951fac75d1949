"""Profile E-ViLM's MSRVTT-QA recipe and what its unknowns change; write the table into docs/parts/evilm.md.

The paper gives 16M parameters (without the task head) and 12.2 G(MAC)s for "video (4 frames)-caption
pairs", but not how many video tokens the decoder reads (which EdgeNeXt stage's grid), the caption
length of the count, or the decoder's MLP width. This script profiles
``recipes/evilm/finetune_msrvtt_qa.yaml`` (``vqa profile``'s counter, fake tensors, one sample, the
model on the meta device) and variants that change one unknown at a time::

    python experiments/evilm_profile.py            # rewrite the table in docs/parts/evilm.md
    python experiments/evilm_profile.py --print    # only print it

The ``bert`` encoder needs a vocabulary file: a stand-in of the paper's size (9,157 entries, 30% of
BERT's 30,522) is written to a temporary folder; its entries do not change any count.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _doc_table import write_between_marks
from cotok_profile import profile_config

PAPER = ROOT / "recipes" / "evilm" / "finetune_msrvtt_qa.yaml"
DOC = ROOT / "docs" / "parts" / "evilm.md"
PAPER_GMACS, PAPER_PARAMS_M = 12.2, 16.0
VOCAB = 9157
#: WebVid captions average "around ... 20 words per caption" (section 4.1): about 24 WordPiece tokens
CAPTION = "a young woman in a red coat walks her small dog along a snowy path in the park at sunset"


def variant(base: dict, *, stage: int | None = None, frames: int | None = None, mlp_ratio: float | None = None,
            vocab: str) -> dict:
    cfg = copy.deepcopy(base)
    model = cfg["model"]
    model["text_encoder"]["vocab_file"] = vocab
    if stage is not None:
        model["backbone"]["stage"] = stage
        model["fusion"]["max_tokens_per_frame"] = 256
        model["fusion"]["video_dim"] = {-2: 160, -3: 96}[stage]  # EdgeNeXt-small's stage widths
    if frames is not None:
        cfg["data"]["dataset_args"]["num_frames"] = frames
        model["fusion"]["max_frames"] = frames
    if mlp_ratio is not None:
        model["fusion"]["mlp_ratio"] = mlp_ratio
    return cfg


def row(label: str, r) -> str:
    p = r.per_part
    g = {k: p[k]["gmacs"] if k in p else 0.0 for k in ("backbone", "text_encoder", "fusion", "head")}
    params = (r.params - p["head"]["params"]) / 1e6
    return (f"| {label} | {params:.2f} | {g['backbone']:.2f} | {g['text_encoder']:.3f} | {g['fusion']:.2f} "
            f"| **{r.gmacs:.2f}** | {r.gmacs / PAPER_GMACS:.2f} |")


HEADER = ("| configuration | params without head (M) | EdgeNeXt | BERT | merged decoder | GMACs | ÷ 12.2 |\n"
          "|---|---|---|---|---|---|---|")


def table() -> str:
    base = yaml.safe_load(PAPER.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab.write_text("\n".join(specials + [f"w{i}" for i in range(VOCAB - len(specials))]) + "\n")
        v = str(vocab)
        rows = [HEADER]

        def add(label: str, cfg: dict, question: str | None = None) -> None:
            rows.append(row(label, profile_config(cfg, question)))
            print(rows[-1], flush=True)

        add("**paper recipe**: 4 x 256², last stage (8x8 grid, 256 video tokens), 9-token question",
            variant(base, vocab=v))
        add("the same with a 20-word caption (WebVid's average)", variant(base, vocab=v), CAPTION)
        add("stage 3 grid (16x16, 1,024 video tokens), 20-word caption", variant(base, stage=-2, vocab=v), CAPTION)
        add("8 frames (512 video tokens), 20-word caption", variant(base, frames=8, vocab=v), CAPTION)
        add("decoder MLP ratio 2, 20-word caption", variant(base, mlp_ratio=2.0, vocab=v), CAPTION)
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the table only")
    args = parser.parse_args()
    text = table()
    if args.print:
        return 0
    write_between_marks(DOC, "evilm_profile", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
