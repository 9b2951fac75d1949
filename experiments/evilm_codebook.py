"""The E-ViLM tokenizer's codebook table, from the output folder of a sweep (``sweeps/evilm_table6``).

For every finished run of ``<out>/sweep.json`` with a stage named ``tokenizer``, the stage's
``checkpoints/last.ckpt`` (in ``<out>/runs/<run>[.<override>]/seed<k>/tokenizer/``) tags synthetic_vqa's
validation split: the share of the codebook used at least once over the split and the perplexity of
the codes' frequencies; beside them the tokenizer's last validation word loss
(``val/svq_token_loss``) and that of the best constant guess (one logit per word fitted on the
training captions with the run's vocabulary, ``<run>/vocab.txt``), which a tokenizer that learnt
only word frequencies does not beat. Runs are grouped by tokenizer recipe and stage-1 epochs (the
recipe's ``trainer.max_epochs``, or ``--trainer.max_epochs=N`` in the stage's command), one row each,
mean ± sample std over seeds::

    vqa sweep sweeps/evilm_table6 --parallel 2 --out experiments/results/evilm_table6
    python experiments/evilm_codebook.py experiments/results/evilm_table6 --table docs/results/evilm_codebook_table.md
    python experiments/evilm_codebook.py experiments/results/evilm_table6 --table-only --table docs/results/evilm_codebook_table.md

Writes ``<out>/codebook.json`` (one entry per tokenizer run: its key, run, seed, tokenizer, epochs and
figures) and ``<out>/codebook.md`` (and ``--table PATH``). A run already in ``codebook.json`` (same
key) is not measured again; a run whose checkpoint is not on this machine is skipped. Entries
converted from ``experiments/evilm_chain.py``'s results (``converted_from``) stay until a measured
run of the same tokenizer, epochs and seed replaces them. ``--table-only`` rewrites the table from
``codebook.json`` alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vqa_components.packaged_recipes import find_recipe, load_recipe
from vqa_components.sweep.results import finished, mean_std

CODEBOOK = "codebook.json"
TABLE = "codebook.md"
FIGURES = ("utilisation", "perplexity", "codes", "tokens", "val_token_loss", "constant_guess_token_loss")


def codebook_usage(ckpt: Path, recipe: Path) -> dict[str, float]:
    """Codebook utilisation and perplexity of the stage-1 tagger over synthetic_vqa's validation split."""
    import torch

    from vqa_components import create
    from vqa_components.layers.pixels import pixels_to_float
    from vqa_components.layers.semantic_tokenizer import VideoTagger

    cfg = load_recipe(recipe)
    svq = next(o for o in cfg["model"]["objectives"] if o["name"] == "svq")
    tagger = VideoTagger(svq.get("tagger"))
    prefix = "objectives.svq.tokenizer.tagger."
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    tagger.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    tagger.eval()
    data = create("dataset", "synthetic_vqa", split="val", **cfg["data"]["dataset_args"])
    counts = torch.zeros(tagger.num_codes)
    loader = torch.utils.data.DataLoader(data, batch_size=32, collate_fn=lambda items: torch.stack(
        [torch.as_tensor(i["video"]) for i in items]))
    with torch.no_grad():
        for video in loader:
            counts += torch.bincount(tagger(pixels_to_float(video)).flatten(), minlength=tagger.num_codes).float()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
    return {"utilisation": float((counts > 0).float().mean()), "perplexity": float(perplexity),
            "codes": tagger.num_codes, "tokens": int(counts.sum())}


def constant_guess_loss(vocab: Path, recipe: Path, word_loss: str) -> float:
    """The tokenizer's word loss on the validation captions of the best constant guess: one logit per
    word, fitted on the training captions (Adam, 500 steps from the words' log-odds), whatever the video. A tokenizer whose
    validation ``token_loss`` is not below it has learnt word frequencies, not what the clips show."""
    import torch

    from vqa_components import create
    from vqa_components.objectives.svq import bce_word_loss, focal_word_loss, multi_hot

    cfg = load_recipe(recipe)
    text = dict(cfg["model"]["text_encoder"])
    enc = create("text_encoder", text.pop("name"), **{**text, "vocab_file": str(vocab)})
    ignore = set(enc.special_token_ids) | {enc.pad_token_id, enc.mask_token_id}

    def targets(split: str) -> torch.Tensor:
        data = create("dataset", "synthetic_vqa", split=split, **cfg["data"]["dataset_args"])
        tok = enc.tokenize([data[i]["caption"] for i in range(len(data))])
        return multi_hot(tok["input_ids"], tok["attention_mask"], enc.vocab_size, ignore)

    loss = focal_word_loss if word_loss == "focal" else bce_word_loss
    train, val = targets("train"), targets("val")
    freq = train.mean(0).clamp(1e-4, 1 - 1e-4)
    logits = torch.log(freq / (1 - freq)).requires_grad_(True)  # from the word frequencies
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(500):
        opt.zero_grad()
        loss(logits.expand_as(train), train).backward()
        opt.step()
    return float(loss(logits.detach().expand_as(val), val))


def tokenizer_stage(record: dict[str, Any]) -> dict[str, Any] | None:
    return next((s for s in record.get("stages") or [] if s.get("name") == "tokenizer"), None)


def recipe_path(record: dict[str, Any]) -> Path:
    """The tokenizer stage's recipe: the recorded path, or the packaged recipe of that name elsewhere."""
    path = Path(record["recipes"]["tokenizer"]["path"])
    if path.is_file():
        return path
    parts = path.with_suffix("").parts
    if "recipes" in parts:  # .../recipes/evilm/tiny/tokenizer.yaml -> evilm/tiny/tokenizer
        return find_recipe("/".join(parts[len(parts) - parts[::-1].index("recipes"):]))
    return find_recipe(path.stem)


def max_epochs(args: list[str]) -> int | None:
    """The last ``--trainer.max_epochs`` of a command line (``=N`` or ``N``), else None."""
    found = None
    for i, arg in enumerate(args):
        if arg.startswith("--trainer.max_epochs="):
            found = int(arg.split("=", 1)[1])
        elif arg == "--trainer.max_epochs" and i + 1 < len(args):
            found = int(args[i + 1])
    return found


def describe(record: dict[str, Any]) -> dict[str, Any]:
    """What groups a tokenizer run: its recipe (name, word loss, restarts) and its stage-1 epochs (the
    stage's fit command's ``--trainer.max_epochs``, else the run's arguments', else the recipe's)."""
    recipe = recipe_path(record)
    cfg = load_recipe(recipe)
    svq = next(o for o in cfg["model"]["objectives"] if o["name"] == "svq")
    stage = tokenizer_stage(record) or {}
    fit = next((c for c in stage.get("commands") or [] if c and c[0] == "fit"), None)
    epochs = max_epochs(fit if fit is not None else list(record.get("args") or []))
    return {
        "key": record["key"], "run": record["run"], "override": record.get("override", ""), "seed": record["seed"],
        "tokenizer": recipe.stem, "recipe": str(record["recipes"]["tokenizer"]["path"]),
        "word_loss": svq.get("word_loss", "focal"), "restart_every": (svq.get("tagger") or {}).get("restart_every", 0),
        "word_reduction": svq.get("word_reduction", "mean"), "word_weight": float(svq.get("word_weight", 1.0)),
        "epochs": epochs if epochs is not None else int(cfg["trainer"]["max_epochs"]),
    }


def measure(record: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The figures of a run's tokenizer stage; None where its checkpoint is not in ``out``."""
    folder = out / "runs" / (record["run"] + (f".{record['override']}" if record.get("override") else "")) \
        / f"seed{record['seed']}"
    ckpt = folder / "tokenizer" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        print(f"{record['run']} seed {record['seed']}: no {ckpt}, skipped", file=sys.stderr)
        return None
    info = describe(record)
    recipe = recipe_path(record)
    figures = codebook_usage(ckpt, recipe)
    figures["val_token_loss"] = (tokenizer_stage(record).get("val_metrics") or {}).get("val/svq_token_loss")
    figures["constant_guess_token_loss"] = constant_guess_loss(folder / "vocab.txt", recipe, info["word_loss"])
    return {**info, **figures, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def slot(entry: dict[str, Any]) -> tuple:
    return entry["tokenizer"], entry["epochs"], entry["seed"]


def update(out: Path, measure: Callable[[dict, Path], dict | None] = measure) -> list[dict[str, Any]]:
    """``codebook.json``'s entries after measuring the finished tokenizer runs of ``sweep.json`` not in it."""
    sweep = json.loads((out / "sweep.json").read_text())
    file = out / CODEBOOK
    old = json.loads(file.read_text())["entries"] if file.is_file() else []
    by_key = {e["key"]: e for e in old}
    entries = []
    for record in sweep["records"]:
        if not finished(record) or tokenizer_stage(record) is None:
            continue
        entry = by_key.get(record["key"]) or measure(record, out)
        if entry is not None:
            entries.append(entry)
    keys, measured = {e["key"] for e in entries}, {slot(e) for e in entries}
    entries += [e for e in old if e.get("converted_from") and e["key"] not in keys and slot(e) not in measured]
    file.write_text(json.dumps({"updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "entries": entries}, indent=1) + "\n")
    return entries


def table(entries: list[dict[str, Any]]) -> str:
    """One row per (tokenizer recipe, epochs): restarting tokenizers first, focal before BCE, then by epochs."""
    lines = [("| tokenizer (stage 1) | codebook used over the validation split (%) | perplexity | validation word loss "
              "| best constant guess | seeds |"), "|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["tokenizer"], e["epochs"], e["word_loss"], e["restart_every"]), []).append(e)
    for (tokenizer, epochs, word_loss, restarts), books in sorted(
            groups.items(), key=lambda kv: (not kv[0][3], kv[0][2] != "focal", kv[0][0], kv[0][1])):
        reduction, weight = books[0].get("word_reduction", "mean"), books[0].get("word_weight", 1.0)
        kind = f"{'BCE' if word_loss == 'bce' else 'focal, eq. 6'}, " + (
            "summed over the words, " if reduction == "sum" else "") + (
            f"weighted {weight:g}, " if weight != 1.0 else "") + (
            f"restarts every {restarts} steps" if restarts else "no restarts") + f", {epochs} epochs"
        cells = [mean_std([b["utilisation"] for b in books]),
                 mean_std([b["perplexity"] for b in books], scale=1, digits=1)]
        cells += [mean_std([b[k] for b in books if b.get(k) is not None], scale=1, digits=4)
                  for k in ("val_token_loss", "constant_guess_token_loss")]
        lines.append(f"| `{tokenizer}` ({kind}) | " + " | ".join(cells) + f" | {len(books)} |")
    return "\n".join(lines) + "\n"


def page(out: Path, entries: list[dict[str, Any]]) -> str:
    converted = sum(bool(e.get("converted_from")) for e in entries)
    note = (f"<!-- written by experiments/evilm_codebook.py {out} on {datetime.now(timezone.utc).date()} from "
            f"{len(entries)} tokenizer runs" + (f" ({converted} converted from evilm_chain.py's results)"
                                                 if converted else "") + " -->\n")
    return note + table(entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the sweep's output folder (its sweep.json and runs/)")
    parser.add_argument("--table", type=Path, help="also write the table page to this file")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from codebook.json")
    args = parser.parse_args(argv)
    if args.table_only:
        if not (args.out / CODEBOOK).is_file():
            parser.error(f"--table-only: no {args.out / CODEBOOK}")
        entries = json.loads((args.out / CODEBOOK).read_text())["entries"]
    else:
        if not (args.out / "sweep.json").is_file():
            parser.error(f"no {args.out / 'sweep.json'} (give the sweep's --out)")
        entries = update(args.out)
    text = page(args.out, entries)
    (args.out / TABLE).write_text(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
