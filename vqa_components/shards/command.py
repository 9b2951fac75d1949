"""The ``vqa shards`` command line.

::

    vqa shards --config RECIPE --out DIR                        # the recipe's dataset, its train/val/test splits
    vqa shards --dataset webvid --dataset_args '{root: WebVid}' --out DIR --split train val
    vqa shards --config RECIPE --out DIR --frames 16 --size 224  # decoded frames instead of the clips' bytes
    vqa shards ... --workers 8                                  # parts converted by 8 processes

Run again after a kill, with the same arguments, to resume. Then train from the shards with
``--data.dataset streaming --data.dataset_args '{input_dir: DIR, num_frames: 16, ...}'``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import yaml

from vqa_components.cli_common import CLIError

#: The DataModule's split arguments, in the order their splits are converted.
SPLIT_KEYS = ("train_split", "val_split", "test_split")
DEFAULT_SPLITS = {"train_split": "train", "val_split": "val", "test_split": "test"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vqa shards",
        description="Convert a registered dataset into LitData shards, read by the `streaming` dataset "
        "(docs/scaling.md, Streaming shards). Run again with the same arguments to resume a killed conversion.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", "-c", help="a recipe (file or packaged name): its data.dataset and dataset_args"
    )
    source.add_argument("--dataset", help="a registered dataset's name (vqa list dataset)")
    p.add_argument(
        "--dataset_args",
        default=None,
        help="the dataset's arguments, a JSON or YAML mapping; with --config, merged over the recipe's",
    )
    p.add_argument("--out", required=True, help="the shards' folder (one subfolder per split)")
    p.add_argument(
        "--split",
        nargs="+",
        help="splits to convert (default: the recipe's train, val and test splits; with --dataset: train)",
    )
    p.add_argument("--frames", type=int, help="store FRAMES decoded, evenly spaced frames (with --size)")
    p.add_argument("--size", type=int, help="of SIZE x SIZE pixels (with --frames)")
    p.add_argument("--workers", type=int, default=1, help="processes converting at once (default 1)")
    p.add_argument(
        "--part_size",
        type=int,
        default=None,
        help="records per part, the unit of work and of resuming (default 1000)",
    )
    p.add_argument("--chunk_bytes", default=None, help="the largest chunk file (default 64MB)")
    p.add_argument(
        "--no_verify",
        action="store_true",
        help="do not decode each clip once while converting (a corrupt clip is then skipped when read)",
    )
    p.add_argument("--overwrite", action="store_true", help="convert again, deleting an earlier conversion")
    return p  # fmt: skip


def _mapping(text: str | None, what: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CLIError(f"{what}: not a JSON or YAML mapping ({exc.__class__.__name__}): {text!r}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CLIError(f"{what}: must be a mapping such as '{{root: data/webvid}}', got {text!r}")
    return value


def source_of(args: argparse.Namespace) -> tuple[str, dict[str, Any], list[str]]:
    """``(dataset name, dataset_args, splits)`` from ``--config`` or ``--dataset``."""
    extra = _mapping(args.dataset_args, "--dataset_args")
    if args.dataset:
        return args.dataset, extra, list(args.split or ["train"])
    from vqa_components.packaged_recipes import find_recipe, load_recipe

    path = find_recipe(args.config)
    data = (load_recipe(path) or {}).get("data") or {}
    if not isinstance(data, dict):
        raise CLIError(f"{path}: the recipe's data section must be a mapping")
    name = data.get("dataset", "synthetic_vqa")
    dataset_args = {**(data.get("dataset_args") or {}), **extra}
    splits = args.split or [data.get(k, DEFAULT_SPLITS[k]) for k in SPLIT_KEYS]
    return name, dataset_args, list(dict.fromkeys(s for s in splits if s))


def cmd_shards(argv: list[str]) -> int:
    """``vqa shards``: convert each split, printing what was written and what was left out."""
    args = parser().parse_args(argv)
    from vqa_components.registry import import_builtin_parts, load_plugins
    from vqa_components.shards.writer import (
        DEFAULT_CHUNK_BYTES,
        DEFAULT_PART_SIZE,
        ShardsError,
        ShardSpec,
        convert,
    )

    import_builtin_parts()
    load_plugins()
    name, dataset_args, splits = source_of(args)
    chunk_bytes: str | int = args.chunk_bytes or DEFAULT_CHUNK_BYTES
    if isinstance(chunk_bytes, str) and chunk_bytes.isdigit():
        chunk_bytes = int(chunk_bytes)
    try:
        for split in splits:
            spec = ShardSpec(
                name, dataset_args, split, frames=args.frames, size=args.size, verify=not args.no_verify,
                part_size=args.part_size or DEFAULT_PART_SIZE, chunk_bytes=chunk_bytes,
            )  # fmt: skip
            report = convert(spec, args.out, workers=args.workers, overwrite=args.overwrite, progress=print)
            print(report.format(), flush=True)
    except ShardsError as exc:
        raise CLIError(str(exc)) from None
    where = os.fspath(args.out)
    print(f"read them with: --data.dataset streaming --data.dataset_args '{{input_dir: {where}}}'")
    return 0
