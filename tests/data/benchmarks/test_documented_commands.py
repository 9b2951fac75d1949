"""docs/datasets.md's "From the files as downloaded" commands, read out of the doc and run on the
miniature releases the benchmark tests build: each command's ``--data...`` arguments parse over its
recipe's ``data:`` section as ``vqa`` parses them (jsonargparse, VideoQADataModule's signature), the
datamodule builds every split the command reads, and none of their clips is missing. The doc's
folders (``--data.dataset_args.root`` and absolute paths) are replaced by the miniature copies."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DOC = ROOT / "docs" / "datasets.md"
MARK = "**From the files as downloaded**"
#: the splits a subcommand reads, by their datamodule argument
READS = {"fit": ("train_split", "val_split"), "test": ("test_split",)}


def documented_commands() -> list[tuple[str, list[str]]]:
    """(section title, argv without ``vqa``) of each command in the first code block after MARK."""
    found = []
    for section in DOC.read_text().split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        if MARK not in body:
            continue
        block = body.split(MARK, 1)[1].split("```", 2)[1]
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("vqa "):
                found.append((title.strip(), shlex.split(line)[1:]))
    return found


COMMANDS = documented_commands()


def fixture_of(module: str, name: str) -> Callable[..., Path]:
    """The body of fixture ``name`` of ``<module>.py`` in this folder (the miniature release it writes)."""
    spec = importlib.util.spec_from_file_location(f"_documented_{module}", HERE / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name).__wrapped__


def clipbert_msrvtt_qa(tmp: Path, mini: Any) -> dict[str, Path]:
    """ClipBERT's txt_db/msrvtt_qa (the JSONL form's txt/), the MSR-VTT folders as unpacked elsewhere."""
    jsonl = fixture_of("test_msrvtt_qa", "jsonl")(tmp / "jsonl", mini)
    return {"root": jsonl / "txt", "/data/MSRVTT": fixture_of("test_video_folders", "msrvtt")(tmp, mini)}


def clipbert_msrvtt_mc(tmp: Path, mini: Any) -> dict[str, Path]:
    """ClipBERT's txt_db/msrvtt_retrieval (its MC file under ClipBERT's name), Frozen's MSRVTT/ elsewhere."""
    videos = fixture_of("test_msrvtt_mc", "release")(tmp, mini)
    txt_db = tmp / "txt_db" / "msrvtt_retrieval"
    txt_db.mkdir(parents=True)
    shutil.copy(videos / "msrvtt_mc_test.jsonl", txt_db / "msrvtt_retrieval_mc_test.jsonl")
    return {"root": txt_db, "/data/MSRVTT": videos}


def release(module: str, name: str = "release") -> Callable[[Path, Any], dict[str, Path]]:
    return lambda tmp, mini: {"root": fixture_of(module, name)(tmp, mini)}


#: the miniature copy of each folder the doc's commands name as root
MINIATURES: dict[str, Callable[[Path, Any], dict[str, Path]]] = {
    "MSRVTT-QA": release("test_video_folders", "msrvtt"),  # MSR-VTT's two archives beside the questions
    "txt_db/msrvtt_qa": clipbert_msrvtt_qa,
    "MSVD-QA": release("test_msvd_qa"),
    "alpro/data/msvd_qa": release("test_msvd_qa", "alpro"),
    "TGIF-QA": release("test_tgif_qa"),
    "NExT-QA/dataset": release("test_nextqa"),
    "iVQA": release("test_ivqa"),
    "AGQA": release("test_agqa"),
    "EgoTaskQA": release("test_egotaskqa"),
    "txt_db/msrvtt_retrieval": clipbert_msrvtt_mc,
    "WebVid": release("test_captions", "webvid"),
}


def data_parser() -> Any:
    from jsonargparse import ArgumentParser

    from vqa_components.data.datamodule import VideoQADataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VideoQADataModule, "data")
    return parser


def test_the_doc_has_a_command_block_for_each_benchmark_with_a_release():
    sections = {title.split(" — ")[0] for title, _ in COMMANDS}
    assert sections >= {"MSRVTT-QA", "MSVD-QA", "TGIF-QA", "NExT-QA", "iVQA", "AGQA 2.0", "EgoTaskQA",
                        "MSRVTT multiple choice", "Caption corpora"}, sections  # fmt: skip
    assert all(argv[0] in READS for _, argv in COMMANDS), COMMANDS


@pytest.mark.parametrize(
    ("section", "argv"), COMMANDS, ids=[f"{t.split(' — ')[0]}:{a[0]}" for t, a in COMMANDS]
)
def test_the_documented_command_reads_every_clip_of_the_miniature_release(section, argv, tmp_path, mini):
    config = argv[argv.index("--config") + 1]
    data_args = []
    for i, arg in enumerate(argv):
        if arg.startswith("--data."):
            data_args += [arg] if "=" in arg else [arg, argv[i + 1]]
    given = dict(zip(data_args[::2], data_args[1::2]))
    doc_root = given["--data.dataset_args.root"]
    assert doc_root in MINIATURES, f"{section}: no miniature release for the doc's root {doc_root!r}"
    folders = MINIATURES[doc_root](tmp_path, mini)
    given["--data.dataset_args.root"] = str(folders.pop("root"))
    for doc_path, path in folders.items():  # absolute folders of the doc, e.g. /data/MSRVTT/TestVideo
        given = {
            k: re.sub(rf"(?<![\w/]){re.escape(doc_path)}(?=/|$|[\],\s])", str(path), v)
            for k, v in given.items()
        }

    recipe_data = yaml.safe_load((ROOT / config).read_text())["data"]
    args = ["--data", yaml.safe_dump(recipe_data)] + [x for kv in given.items() for x in kv]
    data = data_parser().parse_args(args).data.as_dict()
    data.update(batch_size=2, num_workers=0)

    from vqa_components.data.datamodule import VideoQADataModule

    dm = VideoQADataModule(**data)
    splits = [data[key] for key in READS[argv[0]] if data[key] is not None]
    assert splits, f"{section}: `vqa {argv[0]}` reads no split"
    for split in splits:
        ds = dm.dataset(split)
        assert len(ds) > 0, f"{section}: the {split} split of the miniature release is empty"
        missing = sorted({str(ds.video_path(i)) for i in range(len(ds)) if not ds.video_path(i).exists()})
        assert not missing, f"{section}: `vqa {' '.join(argv)}`: {split} clips missing: {missing}"
