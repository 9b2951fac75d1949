"""The compute of one E-ViLM pretraining step with one masked pass or a pass per objective; writes the table.

``recipes/evilm/tiny/pretrain.yaml`` (``masked_pass: single``, E-ViLM's Fig. 3) against
``recipes/evilm/tiny/pretrain_separate_passes.yaml`` (``masked_pass: separate``): one training step
(``training_step`` and its backward) on a batch of the recipe's size from synthetic_vqa, counted by
``torch.utils.flop_counter.FlopCounterMode`` (``vqa profile``'s counter, which covers only the model's
forward, not the objectives': MACs = FLOPs / 2; convolutions, matrix products and attention) with
the calls of each part counted by forward hooks. The split by part is the forward's (the counter
gives a backward op to every module whose forward is open around it, so backward splits mislead). The frozen tagger's forward is counted too (it runs
under ``no_grad``); the vocabulary is the tiny chain's (``vqa vocab --keep_fraction 1.0``, 120 entries)
and the tagger keeps its random weights (which change no count)::

    python experiments/evilm_pass_cost.py            # rewrite the table in docs/parts/evilm.md
    python experiments/evilm_pass_cost.py --print    # only print it
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vqa_components.cli import NO_INIT, release, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc_table import write_between_marks

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "parts" / "evilm.md"
RECIPES = {"single": "recipes/evilm/tiny/pretrain.yaml", "separate": "recipes/evilm/tiny/pretrain_separate_passes.yaml"}
PARTS = ("backbone", "text_encoder", "fusion", "head")


def step_cost(recipe: str, vocab: Path) -> dict:
    """MACs of one training step (forward, and forward + backward), per part, and each part's calls."""
    args = ["--config", str(ROOT / recipe), f"--model.text_encoder.init_args.vocab_file={vocab}", *NO_INIT,
            "--model.allow_random_frozen=true"]  # fmt: skip
    cli = run_cli(args, run=False)
    model, dm = cli.model, cli.datamodule
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    release(cli)
    model.train()
    model.log = lambda *a, **k: None
    calls: Counter = Counter()
    for name in PARTS:
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: calls.update([name]))
    step = TrainingStep(model)  # the root module: the parts are named TrainingStep.model.<part>
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as forward:
        step(batch)
    calls.clear()
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as whole:
        step(batch).backward()
    fwd, both = forward.get_flop_counts(), whole.get_flop_counts()

    def macs(counts: dict, key: str) -> float:
        return sum(counts.get(key, {}).values()) / 2

    return {"batch": len(batch["caption"]), "forward": macs(fwd, "Global"), "step": macs(both, "Global"),
            "parts": {p: macs(fwd, f"TrainingStep.model.{p}") for p in PARTS},
            "tagger": macs(fwd, "TrainingStep.model.objectives.mvm.tagger"), "calls": dict(calls)}  # fmt: skip


class TrainingStep(torch.nn.Module):
    """``model.training_step(batch, 0)`` as a module's forward, so that the counter names every part under it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.training_step(batch, 0)


def table(vocab: Path) -> str:
    costs = {mode: step_cost(recipe, vocab) for mode, recipe in RECIPES.items()}
    b = costs["single"]["batch"]
    header = (f"| masked pass (tiny recipe, batch of {b}) | backbone / text encoder / decoder calls "
              "| forward + backward GMACs | forward GMACs | of which backbone | text encoder | decoder | frozen tagger |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for mode, c in costs.items():
        calls = " / ".join(str(c["calls"].get(p, 0)) for p in ("backbone", "text_encoder", "fusion"))
        parts = " | ".join(f"{c['parts'][p] / 1e9:.2f}" for p in ("backbone", "text_encoder", "fusion"))
        lines.append(f"| `{mode}` (`{Path(RECIPES[mode]).name}`) | {calls} | **{c['step'] / 1e9:.2f}** "
                     f"| {c['forward'] / 1e9:.2f} | {parts} | {c['tagger'] / 1e9:.2f} |")  # fmt: skip
        print(lines[-1], flush=True)
    ratio = costs["single"]["step"] / costs["separate"]["step"]
    lines.append("")
    lines.append(f"A training step with one masked pass costs {ratio:.2f} times one with a pass per objective "
                 f"({costs['single']['step'] / b / 1e6:.0f} against {costs['separate']['step'] / b / 1e6:.0f} "
                 f"MMACs a sample, forward and backward).")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the table only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        subprocess.run([sys.executable, "-m", "vqa_components.cli", "vocab", "--config", str(ROOT / RECIPES["single"]),
                        "--out", str(vocab), "--keep_fraction", "1.0"], check=True, capture_output=True)  # fmt: skip
        text = table(vocab)
    if args.print:
        return 0
    write_between_marks(DOC, "evilm_pass_cost", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
