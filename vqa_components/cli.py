"""The ``vqa`` command: LightningCLI subcommands plus ``list``, ``recipes``, ``sweep``, ``profile``, ``explain``,
``vocab``, ``export``, ``ask`` and ``demo``.

::

    vqa fit      --config quickstart                  # train (LightningCLI); a recipe's name or a path
    vqa fit      ... --ckpt_path last | --overwrite   # resume, or replace an earlier run's checkpoints
    vqa test     --config quickstart --ckpt_path best
    vqa validate | predict ...
    vqa list [KIND] [PATTERN]                         # registered parts
    vqa recipes [PATTERN]                             # packaged recipes and sweep files
    vqa recipes copy NAME DIR [--force]               # an editable copy of a recipe and its includes
    vqa sweep    sweeps/quickstart --parallel 2       # recipes x seeds x overrides: table of mean ± std
    vqa shards   --config RECIPE --out DIR            # the recipe's dataset as LitData shards (`streaming`)
    vqa profile  --config quickstart                  # params and FLOPs, no real compute
    vqa explain  --config RECIPE --ckpt_path best     # PNG: chosen frames and gates, or co-token maps
    vqa vocab    --config RECIPE --out vocab.txt      # WordPiece vocabulary of the training texts (bert)

``--config`` takes a file or the name of a packaged recipe (``quickstart``, ``videodistill/tiny/f_full``;
:mod:`vqa_components.packaged_recipes`, which also merges a recipe's ``base``). Parts in recipes and
on the command line may be given by registry name (see :mod:`vqa_components.recipe`). User errors
(unknown or duplicate names, an unknown recipe, model arguments that cannot work, a ``fit`` into a
folder that holds an earlier run's checkpoints) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from vqa_components.cli_common import CLIError, find_checkpoint, is_launching_process
from vqa_components.errors import ConfigError
from vqa_components.packaged_recipes import copy_recipe, find_recipe, list_recipes, load_recipe
from vqa_components.recipe import check_part_arguments, normalize_cli_args, normalize_config
from vqa_components.registry import (
    REGISTRIES,
    RegistryError,
    get_registry,
    import_builtin_parts,
    list_parts,
    load_plugins,
)

CONFIG_FLAGS = ("--config", "-c")


# ------------------------------------------------------------------ helpers


def _load_recipe(name_or_path: str) -> str:
    """A recipe (a file, or a packaged recipe's name) with its ``base`` merged and part names
    normalised, as a YAML string."""
    cfg = load_recipe(find_recipe(name_or_path))
    return yaml.safe_dump(normalize_config(cfg), sort_keys=False)


def preprocess_args(args: list[str]) -> list[str]:
    """Normalise ``--config`` files and ``--model.<part> NAME`` arguments; check the arguments of parts."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, val = arg.partition("=")
        if key in CONFIG_FLAGS:
            path = val if eq else (args[i + 1] if i + 1 < len(args) else "")
            if not eq:
                i += 1
            out.extend(["--config", _load_recipe(path)])
        else:
            out.append(arg)
        i += 1
    out = normalize_cli_args(out)
    check_part_arguments(out)
    return out


def optional_part_error(exc: BaseException) -> str | None:
    """The user error of a part that may be left out (``fusion: Fusion | None``), if ``exc`` is one.

    jsonargparse builds such a part by trying each type of the ``Union`` and, when both fail, raises one
    ``ValueError`` that lists each type's error: the part's own one-line error (an unknown name, an
    argument it refuses) and "Expected a <class 'NoneType'>". This returns the part's line, which is
    what ``vqa`` would have printed for a part that may not be left out.
    """
    text = str(exc)
    if not isinstance(exc, ValueError) or "Does not validate against any of the Union subtypes" not in text:
        return None
    errors = text.split("Errors:", 1)[1].splitlines() if "Errors:" in text else []
    lines = [e.strip()[2:] for e in errors if e.strip().startswith("- ")]
    own = [e for e in lines if not e.startswith("Expected a <class 'NoneType'>")]
    return own[0] if len(own) == 1 else None


# ------------------------------------------------------------------ LightningCLI


def run_cli(args: list[str], run: bool = True) -> Any:
    """Build (and with ``run``, run) the LightningCLI for ``args``; ``--overwrite`` is ours, not Lightning's."""
    from vqa_components.data.datamodule import VideoQADataModule
    from vqa_components.model import VideoQAModel

    overwrite = run and "--overwrite" in args
    if overwrite and args[0] != "fit":
        raise CLIError("--overwrite works with `vqa fit` only (it replaces an earlier run's checkpoints)")
    saved_argv = sys.argv
    # Lightning's DDP launcher starts the other ranks by running ``sys.argv`` again: it must be this
    # command line, whole and as the user wrote it (recipe paths included), not the caller's.
    sys.argv = [sys.argv[0], *args]
    try:
        from vqa_components.lightning_cli import VQACLI

        return VQACLI(
            VideoQAModel,
            VideoQADataModule,
            args=preprocess_args([a for a in args if a != "--overwrite"]),
            run=run,
            save_config_kwargs={"overwrite": True},
            overwrite=overwrite,
        )
    finally:
        sys.argv = saved_argv


def release(cli: Any) -> None:
    """Drop a finished CLI's model, data and trainer so their memory can be freed.

    jsonargparse keeps the sub-parsers it builds for ``class_path`` values in a module-level cache,
    and those parsers hold Lightning's instantiator, which holds the CLI object: without this, every
    in-process run (``main([...])`` from Python or from a test) would keep its model alive.
    """
    for name in ("model", "datamodule", "trainer", "config_init"):
        if hasattr(cli, name):
            setattr(cli, name, None)


# ------------------------------------------------------------------ list / profile


def cmd_list(args: list[str]) -> int:
    kind = args[0] if args and args[0] in REGISTRIES else None
    rest = args[1:] if kind else args
    pattern = rest[0] if rest else "*"
    if args and kind is None and len(args) > 1:
        get_registry(args[0])  # raises: an unknown kind, with the closest ones
    found = list_parts(kind, pattern)
    for k, entries in found.items():
        if not entries:
            continue
        print(f"{k}:")
        width = max(len(e.name) for e in entries)
        for e in entries:
            print(f"  {e.name.ljust(width)}  {e.description}")
    if not any(found.values()):
        print(f"no parts match {pattern!r}{_list_hint(pattern, kind)}", file=sys.stderr)
        return 1
    return 0


def _list_hint(pattern: str, kind: str | None) -> str:
    """The closest kinds (``vqa list fusoin``) and part names to a pattern that matched nothing."""
    hints = []
    if kind is None:
        kinds = difflib.get_close_matches(pattern, list(REGISTRIES), n=3, cutoff=0.6)
        if kinds:
            hints.append(f"the kind {' or '.join(repr(k) for k in kinds)} (vqa list {kinds[0]})")
    names = sorted({e.name for entries in list_parts(kind).values() for e in entries})
    parts = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
    if parts:
        hints.append(f"the part {' or '.join(repr(n) for n in parts)}")
    kinds = f" Kinds: {', '.join(REGISTRIES)}." if kind is None else ""
    return (f". Did you mean {', or '.join(hints)}?" if hints else ".") + kinds


# ------------------------------------------------------------------ recipes

RECIPES_USAGE = "usage: vqa recipes [PATTERN] | vqa recipes copy NAME DIR [--force]"


def cmd_recipes(args: list[str]) -> int:
    """``vqa recipes [PATTERN]``: the packaged recipes, then the sweep files; ``vqa recipes copy``."""
    if args[:1] in (["-h"], ["--help"]):
        print(RECIPES_USAGE)
        return 0
    if args[:1] == ["copy"]:
        return _copy_recipe(args[1:])
    if len(args) > 1:
        raise CLIError(f"recipes: unexpected argument(s) {' '.join(args[1:])} ({RECIPES_USAGE})")
    pattern = args[0] if args else None
    infos = list_recipes(pattern)
    if not infos:
        print(f"no recipes match {pattern!r} (names: quickstart, videodistill/tiny/*)", file=sys.stderr)
        return 1
    recipes = [i for i in infos if i.kind == "recipe"]
    if recipes:
        rows = [("name", "paper", "dataset", "description")]
        rows += [(i.name, i.paper, i.dataset or "-", i.description) for i in recipes]
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        print("recipes:")
        for row in rows:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[3])
    sweeps = [i for i in infos if i.kind == "sweep"]
    if sweeps:
        width = max(len(i.name) for i in sweeps)
        print("sweeps:")
        for i in sweeps:
            print(f"  {i.name.ljust(width)}  {i.description}")
    return 0


def _copy_recipe(args: list[str]) -> int:
    force = "--force" in args
    args = [a for a in args if a != "--force"]
    if len(args) != 2 or any(a.startswith("-") for a in args):
        raise CLIError(f"recipes copy needs NAME and DIR ({RECIPES_USAGE})")
    written = copy_recipe(args[0], args[1], force=force)
    for path in written:
        print(f"written: {path}")
    print(f"run it:  vqa fit --config {written[0]}")
    return 0


#: Appended when a model is built only to be profiled, or to take a checkpoint's weights: loading an
#: earlier stage's parts (init_from) would change nothing, and init_parts alone would be an error.
NO_INIT = ["--model.init_from=null", "--model.init_parts=null"]


def cmd_profile(args: list[str]) -> int:
    import torch

    from vqa_components.profiler import profile_model

    with torch.device("meta"):  # no memory, no initialisation, no pretrained weights read: shapes suffice
        cli = run_cli([*args, *NO_INIT, "--model.allow_random_frozen=true"], run=False)
    model, dm = cli.model, cli.datamodule
    batch = dm.example_batch(batch_size=1)
    release(cli)
    report = profile_model(model, batch)
    print(report.table())
    print(report.to_json())
    return 0


def _pop_option(args: list[str], name: str, default: str | None) -> str | None:
    """Remove ``--name VALUE`` / ``--name=VALUE`` from ``args`` and return VALUE."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del args[i]
            return arg.split("=", 1)[1]
    return default


def cmd_explain(args: list[str]) -> int:
    """``vqa explain --config R [--ckpt_path best] [--split test] [--index 0] [--out explain.png]``."""
    from vqa_components.data.datamodule import collate_videoqa
    from vqa_components.viz import explain

    args = list(args)
    ckpt = _pop_option(args, "--ckpt_path", None)
    split = _pop_option(args, "--split", "test")
    index_arg = _pop_option(args, "--index", "0") or "0"
    try:
        index = int(index_arg)
    except ValueError:
        raise CLIError(f"--index {index_arg!r}: expected the number of a sample of the split (0, 1, ...)") from None
    out = _pop_option(args, "--out", None)
    cli = run_cli([*args, *NO_INIT] if ckpt is not None else args, run=False)
    model, dm = cli.model, cli.datamodule
    root = cli.trainer.default_root_dir
    release(cli)
    if ckpt is not None:
        from vqa_components.weights import read_checkpoint

        path = find_checkpoint(root, ckpt) if ckpt in ("best", "last") else ckpt
        if not Path(path).is_file():
            raise CLIError(f"--ckpt_path {path}: no such checkpoint file")
        state = read_checkpoint(path)
        model.load_state_dict(state["state_dict"])
        model.on_load_checkpoint(state)
    dataset = dm.dataset(split)
    if not 0 <= index < len(dataset):
        raise CLIError(f"--index {index}: split {split!r} has {len(dataset)} samples")
    batch = collate_videoqa([dataset[index]])
    if batch["batch_size"] == 0:
        raise CLIError(f"sample {index} of split {split!r} could not be read: {batch['skipped'][0]}")
    out_path = Path(out) if out else Path(root) / f"explain_{split}_{index}.png"
    result = explain(model, batch, out_path)
    if "stream_share" in result:  # co-tokenizer: the share of the tokens' weight on each stream, per iteration
        for i, shares in enumerate(result["stream_share"], start=1):
            print(f"iteration {i}: " + ", ".join(f"stream {s} {100 * v:.0f} %" for s, v in enumerate(shares)))
    else:
        print(f"selected frames: {result['selected']}")
    print(f"prediction: {result['prediction']}  answer: {result['answer']}")
    print(f"figure written to {out_path}")
    return 0


def cmd_export(args: list[str]) -> int:
    """``vqa export --config RECIPE [--ckpt_path best] --out DIR``: the run's model as a model folder."""
    from vqa_components.model_folder import export
    from vqa_components.profiler import profile_model
    from vqa_components.weights import read_checkpoint

    args = list(args)
    out = _pop_option(args, "--out", None)
    if not out:
        raise CLIError("vqa export needs --out DIR (the model folder to write)")
    ckpt = _pop_option(args, "--ckpt_path", "best") or "best"
    recipe = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")), None)
    cli = run_cli([*args, *NO_INIT], run=False)
    model, dm, root = cli.model, cli.datamodule, Path(cli.trainer.default_root_dir)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))
    release(cli)
    path = find_checkpoint(root, ckpt) if ckpt in ("best", "last") else ckpt
    if not Path(path).is_file():
        raise CLIError(f"--ckpt_path {path}: no such checkpoint file")
    state = read_checkpoint(path)
    model.on_load_checkpoint(state)
    model.load_state_dict(state["state_dict"])
    model.eval()
    metrics_file = root / "test_metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
    profile = profile_model(model, dm.example_batch(batch_size=1))
    folder = export(model, config, out, recipe=recipe, test_metrics=metrics, profile=profile)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"model folder written to {folder} ({size / 1e6:.1f} MB; weights of {path})")
    print(f"ask it:  vqa ask --model {folder} --video CLIP --question \"...\"")
    return 0


def cmd_ask(args: list[str]) -> int:
    """``vqa ask --model DIR --video CLIP --question Q [--options A B ...]`` or ``--input pairs.jsonl``."""
    import argparse

    parser = argparse.ArgumentParser(prog="vqa ask", description="Answer questions about videos with a model folder.")
    parser.add_argument("--model", required=True, help="a model folder (vqa export) or a Hugging Face hub id")
    parser.add_argument("--video", help="a video file (MP4, AVI, WebM, GIF, ...) or a folder of frames")
    parser.add_argument("--question", help="the question")
    parser.add_argument("--options", nargs="+", help="the options of a multiple-choice question")
    parser.add_argument("--input", help="JSON Lines of {video, question[, options]} to answer")
    parser.add_argument("--output", help="with --input: write the answers here as JSON Lines (default: print)")
    parser.add_argument("--top_k", type=int, default=5, help="answers listed with their probabilities")
    parser.add_argument("--explain", metavar="PNG", help="also save the vqa explain figure for --video")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: 1 below 1 GMAC a sample)")
    opts = parser.parse_args(args)
    if (opts.input is None) == (opts.video is None):
        raise CLIError("vqa ask: give --video and --question, or --input pairs.jsonl")
    if opts.video is not None and not opts.question:
        raise CLIError("vqa ask: --video needs --question")
    from vqa_components.inference import Answerer, format_answer, read_pairs

    answerer = Answerer(opts.model, device=opts.device, threads=opts.threads)
    if opts.input is not None:
        results = answerer.ask_many(read_pairs(opts.input), top_k=opts.top_k)
        text = "".join(json.dumps(r) + "\n" for r in results)
        if opts.output:
            Path(opts.output).write_text(text, encoding="utf-8")
            print(f"{len(results)} answers written to {opts.output}")
        else:
            print(text, end="")
        return 0
    frames = answerer.read_video(opts.video)
    print(format_answer(answerer.ask(frames, opts.question, opts.options, top_k=opts.top_k)))
    if opts.explain:
        from vqa_components.viz import explain

        explain(answerer.pipeline, answerer.batch([frames], [opts.question], [opts.options] if opts.options else None),
                opts.explain)
        print(f"figure written to {opts.explain}")
    return 0


def cmd_demo(args: list[str]) -> int:
    """``vqa demo --model DIR [--host 127.0.0.1] [--port 7860] [--examples PATH ...]``: the demo page."""
    import argparse

    parser = argparse.ArgumentParser(prog="vqa demo", description="Serve a web page that answers questions "
                                     "about videos with a model folder (the demo extra: Gradio).")
    parser.add_argument("--model", required=True, help="a model folder (vqa export) or a Hugging Face hub id")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: all of them)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", nargs="+", metavar="PATH",
                        help="clips to pick: video files, folders of them, pairs.jsonl (vqa ask --input)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: 1 below 1 GMAC a sample)")
    opts = parser.parse_args(args)
    from vqa_components.demo import serve

    serve(opts.model, host=opts.host, port=opts.port, examples=opts.examples, device=opts.device,
          threads=opts.threads)
    return 0


def cmd_vocab(args: list[str]) -> int:
    """``vqa vocab (--config RECIPE | --corpus FILE ...) --out PATH [--keep_fraction 0.3] [--max_words N]``:
    the ``bert`` text encoder's ``vocab.txt``, built from the questions and captions of the recipe's
    training split, or from corpus files (COCO captions JSON, JSON/JSONL records, plain text lines:
    :func:`~vqa_components.text.bert.read_corpus`), as E-ViLM keeps 30 % of COCO's words."""
    from vqa_components.text.bert import build_vocab, count_words, read_corpus, write_vocab

    args = list(args)
    config = _pop_option(args, "--config", None) or _pop_option(args, "-c", None)
    corpora = []
    while (corpus := _pop_option(args, "--corpus", None)) is not None:
        corpora.append(corpus)
    out = _pop_option(args, "--out", None)
    fraction_arg = _pop_option(args, "--keep_fraction", "0.3") or "0.3"
    max_arg = _pop_option(args, "--max_words", None)
    usage = "usage: vqa vocab (--config RECIPE | --corpus FILE ...) --out PATH [--keep_fraction 0.3] [--max_words N]"
    if args:
        raise CLIError(f"vocab: unexpected argument(s) {' '.join(args)} ({usage})")
    if (config is None) == (not corpora) or out is None:
        raise CLIError(f"vocab needs --config or --corpus, and --out ({usage})")
    try:
        fraction = float(fraction_arg)
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction <= 1.0:
        raise CLIError(f"--keep_fraction {fraction_arg!r}: expected a share of the words in (0, 1], e.g. 0.3")
    if max_arg is not None and (not max_arg.isdigit() or int(max_arg) < 1):
        raise CLIError(f"--max_words {max_arg!r}: expected a positive number of words")
    if corpora:
        try:
            texts = [text for corpus in corpora for text in read_corpus(corpus)]
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(str(exc)) from None
        source = f"{len(texts)} texts of {', '.join(corpora)}"
    else:
        split, texts = _training_texts(config)
        source = f"{len(texts)} texts of split {split!r}"
    if not texts:
        raise CLIError(f"{config or ', '.join(corpora)}: no question, caption or text to count")
    distinct = len(count_words(texts))
    vocab = build_vocab(texts, fraction, max_words=int(max_arg) if max_arg else None)
    path = write_vocab(vocab, out)
    size = len(path.read_text(encoding="utf-8").splitlines())
    cap = f", at most {max_arg}" if max_arg else ""
    print(
        f"{size} tokens (keep_fraction {fraction:g}{cap} of {distinct} distinct words, plus special tokens and "
        f"characters) from {source} written to {path}"
    )
    return 0


def _training_texts(config: str) -> tuple[str, list[str]]:
    """The recipe's training split (only its ``data`` section is built) and its question and caption texts."""
    from vqa_components.data.datamodule import VideoQADataModule

    data = (yaml.safe_load(_load_recipe(config)) or {}).get("data") or {}
    if isinstance(data, dict) and "init_args" in data:  # data: {class_path: ..., init_args: {...}}
        data = data["init_args"] or {}
    try:
        dm = VideoQADataModule(**data)
        split = dm.splits["fit"]
        if split is None:
            raise CLIError(f"{config}: data.train_split is null: no training split to count words in")
        dataset = dm.dataset(split, training=False)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"{config}: data: {exc}".replace("\n", " ")) from None
    records = getattr(dataset, "records", None)
    if records is not None:  # the annotations: no video is decoded
        pairs = [(getattr(r, "question", ""), getattr(r, "caption", "")) for r in records]
    else:
        samples = (dataset[i] for i in range(len(dataset)))
        pairs = [(s.get("question", ""), s.get("caption", "")) for s in samples if isinstance(s, dict)]
    return split, [text for pair in pairs for text in pair if text]


USAGE = """usage: vqa {fit,validate,test,predict,list,recipes,sweep,shards,profile,explain,vocab,export,ask,demo} ...

  fit|validate|test|predict   LightningCLI subcommands (vqa fit --help); --config RECIPE is a file
                              or a packaged recipe's name (quickstart, videodistill/tiny/f_full)
  fit ... --overwrite         replace the checkpoints an earlier fit left in trainer.default_root_dir
                              (--ckpt_path last resumes that run instead)
  list [KIND] [PATTERN]       registered parts, e.g. `vqa list fusion 'cross*'`
  recipes [PATTERN]           packaged recipes (name, paper, dataset, description), then sweep files
  recipes copy NAME DIR [--force]
                              an editable copy of a recipe and the files it includes (base:)
  sweep SWEEP_FILE | RECIPE ... [--seeds 0 1 2] [--parallel N] [--launcher slurm] [-- VQA_ARGS]
                              fit and test recipes x seeds x overrides, or chains of stages; keeps
                              finished runs; writes sweep.json, table.md (mean ± std) and plot.png
                              (vqa sweep --help)
  shards (--config RECIPE | --dataset NAME --dataset_args MAPPING) --out DIR [--split S ...]
         [--frames N --size S] [--workers N]
                              a dataset's splits as LitData shards (resumed if killed), read by the
                              `streaming` dataset (vqa shards --help)
  profile --config RECIPE     parameters and forward FLOPs of a recipe for one sample
  explain --config RECIPE [--ckpt_path best] [--split test] [--index 0] [--out PNG]
                              figure of the frames a sampler chose and the LA-Gate values, or of
                              the co-tokenizer's selection maps per stream and iteration
  vocab (--config RECIPE | --corpus FILE ...) --out PATH [--keep_fraction 0.3] [--max_words N]
                              vocab.txt of the most frequent words of the training split's
                              questions and captions, or of corpus files (COCO captions JSON,
                              JSON/JSONL records, text lines): the bert text encoder's vocab_file
  export --config RECIPE [--ckpt_path best] --out DIR
                              the run's model as a self-contained model folder (config.yaml,
                              model.safetensors, vocabularies, README.md model card)
  ask --model DIR --video CLIP --question Q [--options A B ...] [--explain PNG]
  ask --model DIR --input pairs.jsonl [--output answers.jsonl]
                              answers (and the top 5 with probabilities) for your own videos
  demo --model DIR [--host 127.0.0.1] [--port 7860] [--examples PATH ...]
                              a local web page: upload a clip, ask, see the answer, the top 5
                              and the chosen frames or maps (the demo extra: Gradio)
"""


def _show_model_log() -> None:
    """Show the model's INFO lines in the terminal (which parts ``init_from`` loaded; what an epoch left
    out; an open_clip part left with random weights), once, on rank 0."""
    if logging.getLogger().handlers or not is_launching_process():
        return  # the user configured logging, or a DDP rank other than 0
    for name in ("vqa_components.weights", "vqa_components.data.admission", "vqa_components.layers.open_clip"):
        logger = logging.getLogger(name)
        if logger.handlers:
            continue  # configured already (an earlier run in this process, or the user)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # open_clip configures the root logger later: no second copy of each line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if argv and argv[0] == "ask":  # imports only the parts of the model it answers with (no Lightning)
            return cmd_ask(argv[1:])
        if argv and argv[0] == "demo":  # the same, and Gradio
            return cmd_demo(argv[1:])
        if argv and argv[0] == "recipes":  # YAML files only: no registry, no torch
            return cmd_recipes(argv[1:])
        if argv and argv[0] == "sweep":  # runs vqa processes; needs no part itself
            from vqa_components.sweep.command import cmd_sweep

            return cmd_sweep(argv[1:])
        if argv and argv[0] == "shards":  # a dataset into LitData shards (the streaming dataset's)
            from vqa_components.shards.command import cmd_shards

            return cmd_shards(argv[1:])
        import_builtin_parts()
        load_plugins()
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        if argv[0] == "list":
            return cmd_list(argv[1:])
        _show_model_log()
        if argv[0] == "profile":
            return cmd_profile(argv[1:])
        if argv[0] == "explain":
            return cmd_explain(argv[1:])
        if argv[0] == "vocab":
            return cmd_vocab(argv[1:])
        if argv[0] == "export":
            return cmd_export(argv[1:])
        release(run_cli(argv))
        return 0
    except (RegistryError, CLIError, ConfigError) as exc:
        print(f"vqa: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # bad data: one line that names the file, record and field
        from vqa_components.data.annotations import AnnotationError
        from vqa_components.data.video_io import VideoDecodeError

        if isinstance(exc, (AnnotationError, VideoDecodeError)):
            print(f"vqa: error: {exc}", file=sys.stderr)
            return 1
        part_error = optional_part_error(exc)
        if part_error:
            print(f"vqa: error: {part_error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    # `python -m vqa_components.cli`: run the imported module's main, not this __main__ copy, so that
    # errors raised by modules that import vqa_components.cli (CLIError) are the ones caught here
    from vqa_components.cli import main as _main

    sys.exit(_main())
