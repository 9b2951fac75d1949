"""The tiny E-ViLM chain on synthetic_vqa, as one command: vocabulary, tokenizer, pretraining, fine-tuning, test.

Every stage is a ``vqa`` command on a recipe of ``recipes/evilm/tiny/``, each starting from the
previous stage's ``last.ckpt`` (``--model.init_from``)::

    vqa vocab --config tokenizer.yaml --out <run>/vocab.txt --keep_fraction 1.0
    vqa fit   --config tokenizer.yaml                                  (stage 1: svq)
    vqa fit   --config pretrain.yaml  --model.init_from <tokenizer>    (stage 2: MLM + VTM + MVM)
    vqa fit   --config finetune.yaml  --model.init_from <pretrain>     (QA)
    vqa test  --config finetune.yaml  --ckpt_path best

``--pretrain`` picks the row of Table 5: ``pretrain`` (VTM + MLM + MVM, the default),
``pretrain_vtm_mlm``, ``pretrain_vtm`` (neither needs stage 1), ``none`` (fine-tuning from
scratch, ``--model.init_parts null``) or ``question_only`` (the baseline: ``question_only.yaml``,
a blind backbone, from scratch); ``tokenizer_only`` runs stage 1 alone (its codebook figures, no
QA); ``--tokenizer tokenizer_bce`` trains stage 1 with the BCE word loss (Table 6), and
``tokenizer_no_restart`` / ``tokenizer_bce_no_restart`` without dead-code restarts (the paper's
quantizer); ``--tokenizer-epochs N`` trains stage 1 for N epochs instead of the recipe's
``max_epochs`` (a longer tokenizer, same recipe otherwise; such chains get their own table rows).
``--parallel N`` runs N chains at once (each in its own folder; give each ``OMP_NUM_THREADS=1`` on a
2-core machine). After stage 1 the tagger labels the validation split and the codebook utilisation
(share of the codes used at least once over the split) and perplexity are recorded.

The vocabulary keeps every word (``--keep_fraction 1.0``): synthetic_vqa's captions and questions
have 69 distinct words, and keeping the paper's 30% would spell the others in characters, which
would make the tokenizer's word targets characters.

    python experiments/evilm_chain.py                          # the full model, seed 0 (< 15 min, 2 cores)
    python experiments/evilm_chain.py --seeds 0 1 2 --pretrain pretrain pretrain_vtm_mlm pretrain_vtm none question_only
    python experiments/evilm_chain.py --tokenizer tokenizer_bce --seeds 0 1 2 --pretrain pretrain tokenizer_only
    python experiments/evilm_chain.py --tokenizer tokenizer_bce --tokenizer-epochs 6 --seeds 0 1 2

Results (one entry per chain: the stages' wall times, the test metrics, the codebook figures) go to
``experiments/results/evilm_tiny.json``; chains already there with unchanged recipes (sha256),
seed, variant and generator version are kept, as in ``seed_sweep.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from seed_sweep import git_commit, mean_std, recipe_digest, table

from vqa_components.data.synthetic import GENERATOR_VERSION

TINY = ROOT / "recipes" / "evilm" / "tiny"
PRETRAIN = ("pretrain", "pretrain_vtm_mlm", "pretrain_vtm", "none", "question_only", "tokenizer_only")
TOKENIZERS = ("tokenizer", "tokenizer_bce", "tokenizer_no_restart", "tokenizer_bce_no_restart")
RESULTS = ROOT / "experiments" / "results" / "evilm_tiny.json"
TABLE = ROOT / "docs" / "results" / "evilm_table.md"
#: Table 5's rows (and the question-only baseline), by (pretrain, tokenizer)
LABELS = {
    ("question_only", "tokenizer"): "question only (blind video), from scratch",
    ("none", "tokenizer"): "no pretraining",
    ("pretrain_vtm", "tokenizer"): "VTM",
    ("pretrain_vtm_mlm", "tokenizer"): "VTM + MLM",
    ("pretrain", "tokenizer"): "VTM + MLM + MVM (the full model; focal tokenizer)",
    ("pretrain", "tokenizer_bce"): "VTM + MLM + MVM with the BCE tokenizer (Table 6)",
}


def vqa(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "vqa_components.cli", *args]
    with log.open("a") as f:
        f.write("$ vqa " + " ".join(args) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=f, env=dict(os.environ, PYTHONUNBUFFERED="1"), check=False)
    if res.returncode:
        raise SystemExit(f"vqa {args[0]} failed (exit {res.returncode}); see {log}")


def codebook_usage(ckpt: Path, recipe: Path) -> dict[str, float]:
    """Codebook utilisation and perplexity of the stage-1 tagger over synthetic_vqa's validation split."""
    import torch

    from vqa_components import create
    from vqa_components.layers.pixels import pixels_to_float
    from vqa_components.layers.semantic_tokenizer import VideoTagger

    cfg = yaml.safe_load(recipe.read_text())
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


def last_val(run_root: Path, key: str) -> float | None:
    """The last logged validation value of ``key`` in a run folder's ``metrics.csv`` (CSVLogger)."""
    import csv

    files = sorted(run_root.glob("logs/version_*/metrics.csv"))
    if not files:
        return None
    values = [row[key] for row in csv.DictReader(files[-1].open()) if row.get(key)]
    return float(values[-1]) if values else None


def constant_guess_loss(vocab: Path, recipe: Path, word_loss: str) -> float:
    """The tokenizer's word loss on the validation captions of the best constant guess: one logit per
    word, fitted on the training captions (Adam, 500 steps from the words' log-odds), whatever the video. A tokenizer whose
    validation ``token_loss`` is not below it has learnt word frequencies, not what the clips show."""
    import torch

    from vqa_components import create
    from vqa_components.objectives.svq import bce_word_loss, focal_word_loss, multi_hot

    cfg = yaml.safe_load(recipe.read_text())
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


def recipe_epochs(tokenizer: str) -> int:
    """The stage-1 recipe's own ``trainer.max_epochs``."""
    return int(yaml.safe_load((TINY / f"{tokenizer}.yaml").read_text())["trainer"]["max_epochs"])


def uses_tokenizer(pretrain: str) -> bool:
    return pretrain in ("pretrain", "tokenizer_only")


def tokenizer_epochs(record: dict) -> int | None:
    """Epochs of a chain's stage 1 (None where the chain has none); older records ran the recipe's."""
    if not uses_tokenizer(record["pretrain"]):
        return None
    return record.get("tokenizer_epochs") or recipe_epochs(record["tokenizer"])


def run_chain(seed: int, pretrain: str, tokenizer: str, out: Path, epochs: int | None = None) -> dict:
    longer = epochs is not None and epochs != recipe_epochs(tokenizer) and uses_tokenizer(pretrain)
    run = out / (f"{pretrain}_{tokenizer}" + (f"_{epochs}ep" if longer else "") + f"_seed{seed}")
    run.mkdir(parents=True, exist_ok=True)
    log = run / "chain.log"
    log.write_text("")
    vocab = run / "vocab.txt"
    common = [f"--seed_everything={seed}", f"--model.text_encoder.init_args.vocab_file={vocab}",
              "--trainer.enable_progress_bar=false"]
    walls: dict[str, float] = {}
    record: dict = {"seed": seed, "pretrain": pretrain, "tokenizer": tokenizer}
    if uses_tokenizer(pretrain):
        record["tokenizer_epochs"] = epochs or recipe_epochs(tokenizer)

    def stage(name: str, recipe: str, *extra: str, sub: str = "fit") -> Path:
        start = time.time()
        root = run / name
        args = [sub, "--config", str(TINY / f"{recipe}.yaml"), f"--trainer.default_root_dir={root}", *common, *extra]
        vqa(*(args + (["--overwrite"] if sub == "fit" else [])), log=log)
        walls[f"{name}_{sub}"] = time.time() - start
        return root / "checkpoints" / "last.ckpt"

    start = time.time()
    vqa("vocab", "--config", str(TINY / f"{tokenizer}.yaml"), "--out", str(vocab), "--keep_fraction", "1.0", log=log)
    walls["vocab"] = time.time() - start
    init: list[str] = ["--model.init_parts=null"]
    finetune = "question_only" if pretrain == "question_only" else "finetune"
    if pretrain not in ("none", "question_only"):
        pre_args: list[str] = []
        if uses_tokenizer(pretrain):
            tok = stage("tokenizer", tokenizer, *([f"--trainer.max_epochs={epochs}"] if epochs else []))
            record["codebook"] = codebook_usage(tok, TINY / f"{tokenizer}.yaml")
            record["codebook"]["val_token_loss"] = last_val(run / "tokenizer", "val/svq_token_loss")
            record["codebook"]["constant_guess_token_loss"] = constant_guess_loss(
                vocab, TINY / f"{tokenizer}.yaml", "bce" if "bce" in tokenizer else "focal")
            pre_args = [f"--model.init_from={tok}"]
        if pretrain == "tokenizer_only":
            record["wall_s"] = walls
            record["total_wall_s"] = sum(walls.values())
            return record
        init = [f"--model.init_from={stage('pretrain', pretrain, *pre_args)}"]
    stage("finetune", finetune, *init)
    stage("finetune", finetune, "--ckpt_path=best", sub="test")
    record["metrics"] = json.loads((run / "finetune" / "test_metrics.json").read_text())
    record["wall_s"] = walls
    record["total_wall_s"] = sum(walls.values())
    return record


def label(r: dict) -> str:
    """A chain's row in the accuracy table: Table 5's name, and the tokenizer's epochs where not the recipe's."""
    name = LABELS.get((r["pretrain"], r["tokenizer"]), f"{r['pretrain']} / {r['tokenizer']}")
    epochs = tokenizer_epochs(r)
    if epochs is not None and epochs != recipe_epochs(r["tokenizer"]):
        name += f", tokenizer trained {epochs} epochs"
    return name


def write_tables(runs: list[dict]) -> None:
    """The accuracy table (seed_sweep's format) and the codebook table, into ``docs/results/evilm_table.md``."""
    rows = [dict(r, recipe=label(r)) for r in runs if r.get("metrics")]
    order = list(LABELS.values())
    order += sorted({r["recipe"] for r in rows} - set(order))
    accuracy = table(rows, {name: name for name in order})
    lines = [("| tokenizer (stage 1) | codebook used over the validation split (%) | perplexity | validation word loss "
              "| best constant guess | seeds |"), "|---|---|---|---|---|---|"]

    for tokenizer, epochs in sorted({(r["tokenizer"], tokenizer_epochs(r)) for r in runs if "codebook" in r},
                                    key=lambda te: (TOKENIZERS.index(te[0]), te[1])):
        books = [r["codebook"] for r in runs
                 if "codebook" in r and (r["tokenizer"], tokenizer_epochs(r)) == (tokenizer, epochs)]
        if books:
            svq = next(o for o in yaml.safe_load((TINY / f"{tokenizer}.yaml").read_text())["model"]["objectives"]
                       if o["name"] == "svq")
            restarts = svq.get("tagger", {}).get("restart_every", 0)
            kind = f"{'BCE' if svq.get('word_loss') == 'bce' else 'focal, eq. 6'}, " + (
                f"restarts every {restarts} steps" if restarts else "no restarts") + f", {epochs} epochs"
            cells = [mean_std([b["utilisation"] for b in books]),
                     mean_std([b["perplexity"] for b in books], scale=1, digits=1)]
            cells += [mean_std([b[k] for b in books if b.get(k) is not None], scale=1, digits=4)
                      for k in ("val_token_loss", "constant_guess_token_loss")]
            lines.append(f"| `{tokenizer}` ({kind}) | " + " | ".join(cells) + f" | {len(books)} |")
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(f"<!-- written by experiments/evilm_chain.py on {datetime.now(timezone.utc).date()}, "
                     f"synthetic_vqa generator version {GENERATOR_VERSION} -->\n" + accuracy + "\n"
                     + "\n".join(lines) + "\n")


def recipes_of(pretrain: str, tokenizer: str) -> list[str]:
    if pretrain == "question_only":
        return ["question_only"]
    if pretrain == "tokenizer_only":
        return [tokenizer]
    names = ["finetune"] + ([pretrain] if pretrain != "none" else []) + ([tokenizer] if pretrain == "pretrain" else [])
    return sorted(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pretrain", nargs="+", choices=PRETRAIN, default=["pretrain"])
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="tokenizer")
    parser.add_argument("--tokenizer-epochs", type=int, default=None,
                        help="train stage 1 this many epochs instead of the recipe's max_epochs")
    parser.add_argument("--parallel", type=int, default=1, help="chains run at once")
    parser.add_argument("--fresh", action="store_true", help="ignore the chains already in the results file")
    parser.add_argument("--table-only", action="store_true", help="only rewrite docs/results/evilm_table.md")
    args = parser.parse_args()
    out = ROOT / "runs" / "evilm_tiny"
    kept = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() and not args.fresh else []

    def key(r: dict) -> tuple:
        return r["seed"], r["pretrain"], r["tokenizer"], tokenizer_epochs(r) or 0

    def digests(pretrain: str, tokenizer: str) -> dict[str, str]:
        return {n: recipe_digest(TINY / f"{n}.yaml") for n in recipes_of(pretrain, tokenizer)}

    runs = [r for r in kept if r.get("recipe_sha256") == digests(r["pretrain"], r["tokenizer"])
            and r.get("generator_version") == GENERATOR_VERSION]
    done = {key(r) for r in runs}
    if args.table_only:
        write_tables(runs)
        return 0
    lock = threading.Lock()

    def chain(seed_pretrain: tuple[int, str]) -> None:
        seed, pretrain = seed_pretrain
        record = run_chain(seed, pretrain, args.tokenizer, out, args.tokenizer_epochs)
        record.update(recipe_sha256=digests(pretrain, args.tokenizer), generator_version=GENERATOR_VERSION,
                      commit=git_commit())
        with lock:
            runs.append(record)
            print(f"{pretrain} / {args.tokenizer} seed {seed}: acc {record.get('metrics', {}).get('test/acc')}, "
                  f"{record['total_wall_s']:.0f} s" + (f", codebook {record['codebook']}" if "codebook" in record else ""),
                  flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                           "cpu_count": os.cpu_count(), "parallel_chains": args.parallel,
                                           "runs": sorted(runs, key=key)}, indent=1) + "\n")
            write_tables(runs)

    todo = [(seed, p) for seed in args.seeds for p in args.pretrain
            if key({"seed": seed, "pretrain": p, "tokenizer": args.tokenizer,
                    "tokenizer_epochs": args.tokenizer_epochs}) not in done]
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        list(pool.map(chain, todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
