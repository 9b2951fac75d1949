"""The ``streaming`` dataset over ``vqa shards``' LitData shards: the samples of the folder dataset it was
converted from (pixels and text, for a video folder, a frame folder, WebVid and a QA benchmark's
miniature release), bad records counted as the folder datasets count them, the DataModule's loader,
shards in an S3 bucket (a local moto server) read and trained from, and (slow tier) every sample once per epoch over 2 DDP processes x 2 workers, and a resume in the middle
of an epoch that neither repeats nor skips a batch, with 0 and 2 workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from data.benchmarks.conftest import jpeg_frames, mp4, write_csv, write_json
from helpers import ROOT, run_vqa
from lightning.pytorch.callbacks import Callback

from vqa_components.data.bad_input import SkipReport
from vqa_components.data.datamodule import VideoQADataModule, collate_videoqa
from vqa_components.data.streaming import StreamingVideoQADataset
from vqa_components.data.video_io import VideoDecodeError
from vqa_components.registry import DATASETS
from vqa_components.shards.writer import ShardSpec, convert

#: synthetic_vqa shrunk to a few clips of 32 frames at 32x32
TINY_SYNTHETIC = {"num_train": 32, "num_val": 16, "num_test": 16, "clip_frames": 32, "clip_size": 32}


class RecordBatches(Callback):
    """Appends ``{"rank", "stage", "epoch", "step", "indices"}`` per batch to the JSON Lines file ``path``
    (``--trainer.callbacks+={class_path: data.test_streaming.RecordBatches, init_args: {path: ...}}``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, trainer, stage: str, batch: dict[str, Any]) -> None:
        row = {"rank": trainer.global_rank, "stage": stage, "epoch": trainer.current_epoch,
               "step": trainer.global_step, "indices": batch["index"].tolist() if "index" in batch else []}  # fmt: skip
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx
    ) -> None:  # a step that was taken
        self._write(trainer, "train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, "val", batch)


class Interrupted(Exception):
    """What :class:`InterruptAt` raises: a run killed in the middle of an epoch."""


class InterruptAt(Callback):
    """Stops a fit with :class:`Interrupted` when batch ``step`` starts (``global_step == step``), as a
    kill would: after the checkpoint of the step before, before this batch is trained."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Interrupted(f"interrupted at step {self.step}")


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def shards(tmp: Path, dataset: str, args: dict[str, Any], split: str, **kw: Any) -> Path:
    convert(ShardSpec(dataset, args, split, **kw), tmp / "shards")
    return tmp / "shards"


def assert_same_samples(folder: Any, streaming: StreamingVideoQADataset) -> None:
    """Every sample of the shards is the folder dataset's sample of the same index: keys, text, pixels."""
    assert len(streaming) == len(folder)
    seen = []
    for i in range(len(streaming)):
        got = streaming[i]
        want = folder[got["index"]]
        assert list(got) == list(want), (list(got), list(want))
        assert got["video"].dtype == torch.uint8 and torch.equal(got["video"], want["video"]), got["video_id"]
        assert {k: v for k, v in got.items() if k != "video"} == {
            k: v for k, v in want.items() if k != "video"
        }
        seen.append(got["index"])
    assert sorted(seen) == list(range(len(folder)))


# ------------------------------------------------------------ miniature sources


def _video_folder(tmp: Path) -> tuple[str, dict[str, Any]]:
    anns = [{"video_id": f"v{i}", "question": f"what is shown {i}?", "answer": "ab"[i % 2], "question_type": "what",
             "caption": f"clip {i}"} for i in range(4)]  # fmt: skip
    write_json(tmp / "anns" / "val.json", anns)
    write_json(tmp / "anns" / "train.json", anns)
    for i in range(4):
        mp4(tmp / "videos" / f"v{i}.mp4", level=40 * i)
    return "videoqa_json", {
        "annotation_file": str(tmp / "anns" / "{split}.json"),
        "video_dir": str(tmp / "videos"),
    }


def _webvid(tmp: Path) -> tuple[str, dict[str, Any]]:
    header = ["videoid", "contentUrl", "duration", "page_dir", "name"]
    rows_ = [[1000 + i, "u", "PT00H00M05S", f"00{i % 2}", f"caption number {i}"] for i in range(3)]
    write_csv(tmp / "WebVid" / "metadata" / "results_2M_val.csv", header, rows_)
    write_csv(tmp / "WebVid" / "metadata" / "results_2M_train.csv", header, rows_)
    for vid, _, _, page, _ in rows_:
        mp4(tmp / "WebVid" / "videos" / page / f"{vid}.mp4", level=vid % 200)
    return "webvid", {"root": str(tmp / "WebVid")}


def _msrvtt_qa(tmp: Path) -> tuple[str, dict[str, Any]]:
    qa = [{"answer": a, "id": i, "question": f"what {q}?", "video_id": i % 3} for i, (q, a) in
          enumerate([("is it", "man"), ("runs", "dog"), ("is there", "man"), ("cooks", "pan")])]  # fmt: skip
    for name in ("train", "val", "test"):
        write_json(tmp / "msrvtt_qa" / f"{name}_qa.json", qa)
    for n in range(3):
        mp4(tmp / "msrvtt_qa" / "video" / f"video{n}.mp4", level=30 * n)
    return "msrvtt_qa", {"root": str(tmp / "msrvtt_qa"), "max_answers": 2}


def _egotaskqa_frames(tmp: Path) -> tuple[str, dict[str, Any]]:
    def qa(question, answer, interval, qid):
        return {"question": question, "answer": answer, "interval": interval, "type": ["world"],
                "category": ["descriptive"], "semantic": "action", "structural": "query", "reference": "direct",
                "question_id": qid, "video_id": 0}  # fmt: skip

    recs = [
        qa("what is done?", "cut", "S1_Cook|fpv1|0|8", 0),
        qa("what next?", "wash", "S1_Cook|fpv1|4|16", 1),
    ]
    for kind in ("direct", "indirect"):
        for name in ("train", "val", "test"):
            write_json(tmp / "Ego" / "qa" / kind / f"{name}_qas.json", recs)
    jpeg_frames(tmp / "Ego" / "videos" / "S1_Cook" / "fpv1", level=0, frames=16)
    return "egotaskqa", {"root": str(tmp / "Ego")}


SOURCES = {
    "video_folder": _video_folder,
    "webvid": _webvid,
    "msrvtt_qa": _msrvtt_qa,
    "frame_folder": _egotaskqa_frames,
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_samples_equal_the_folder_datasets(tmp_path, source):
    """Shards of each kind of source give, decoded with the same options (evaluation), the same samples."""
    name, args = SOURCES[source](tmp_path)
    args = {**args, "num_frames": 3, "frame_size": 24}
    out = shards(tmp_path, name, args, "val", part_size=2)
    folder = DATASETS.get(name)(split="val", training=False, **args)
    streaming = StreamingVideoQADataset(str(out), "val", training=False, num_frames=3, frame_size=24)
    assert_same_samples(folder, streaming)
    assert streaming.answer_vocab == folder.answer_vocab and streaming.families == folder.families
    # the DataModule serves what it served from the folder dataset
    dm_args = {
        "batch_size": 2,
        "num_workers": 0,
        "train_split": None,
        "test_split": None,
        "predict_split": None,
    }
    folder_dm = VideoQADataModule(name, args, **dm_args)
    streaming_dm = VideoQADataModule(
        "streaming", {"input_dir": str(out), "num_frames": 3, "frame_size": 24}, **dm_args
    )
    for dm in (folder_dm, streaming_dm):
        dm.setup("validate")
    assert (streaming_dm.kind, streaming_dm.answer_vocab, streaming_dm.families, streaming_dm.breakdowns) == (
        folder_dm.kind, folder_dm.answer_vocab, folder_dm.families, folder_dm.breakdowns)  # fmt: skip
    batches = list(streaming_dm.val_dataloader())
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(len(folder)))


def test_a_frame_folder_record_stores_its_frame_range_only(tmp_path):
    from litdata import StreamingDataset

    name, args = _egotaskqa_frames(tmp_path)
    out = shards(tmp_path, name, {**args, "num_frames": 2}, "val")
    stored = [json.loads(StreamingDataset(str(out / "val"))[i]["meta"])["_clip"] for i in range(2)]
    assert stored[0]["names"] == [f"img_{i:05d}.jpg" for i in range(1, 9)]  # interval 0|8
    assert stored[1]["names"] == [f"img_{i:05d}.jpg" for i in range(5, 17)]  # interval 4|16


def test_decoded_frames_are_the_folder_datasets_evaluation_frames(tmp_path):
    out = shards(tmp_path, "synthetic_vqa", {**TINY_SYNTHETIC, "num_frames": 16}, "val", frames=4, size=16)
    folder = DATASETS.get("synthetic_vqa")(
        split="val", training=False, **TINY_SYNTHETIC, num_frames=4, frame_size=16
    )
    streaming = StreamingVideoQADataset(str(out), "val", training=False, num_frames=4, frame_size=16)
    assert streaming.stored == "decoded"
    assert_same_samples(folder, streaming)
    fewer = StreamingVideoQADataset(
        str(out), "val", training=True, num_frames=2, frame_sampling="random", crop_size=8
    )
    assert fewer[0]["video"].shape == (2, 3, 8, 8)


# ------------------------------------------------------------ bad input


def _release_with_bad_clips(tmp: Path) -> tuple[str, dict[str, Any]]:
    name, args = _video_folder(tmp)
    (tmp / "videos" / "v1.mp4").unlink()  # missing
    (tmp / "videos" / "v2.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))  # corrupt
    return name, {**args, "max_missing_fraction": 1.0, "num_frames": 2}


def test_bad_records_are_counted_while_converting_and_reported_every_epoch(tmp_path):
    name, args = _release_with_bad_clips(tmp_path)
    report = convert(ShardSpec(name, args, "val"), tmp_path / "shards")
    assert report.samples == 2 and report.counts() == {"missing_video": 1, "undecodable_video": 1}
    assert "missing_video: v1" in report.format() and "undecodable_video: v2" in report.format()
    streaming = StreamingVideoQADataset(str(tmp_path / "shards"), "val", training=False, num_frames=2)
    assert sorted((s.cause, s.video_id, s.index) for s in streaming.skipped_records) == [
        ("missing_video", "v1", 1), ("undecodable_video", "v2", 2)]  # fmt: skip
    # the model's end-of-epoch report adds the dataset's skipped records to what the batches left out
    summary = SkipReport().reduce(streaming.skipped_records)
    assert summary.counts == {"missing_video": 1, "undecodable_video": 1}


def test_a_corrupt_clip_in_the_shards_is_a_skipped_sample_when_read(tmp_path):
    name, args = _release_with_bad_clips(tmp_path)
    report = convert(ShardSpec(name, args, "val", verify=False), tmp_path / "shards")
    assert report.counts() == {"missing_video": 1}  # without decoding, only the missing clip is seen
    streaming = StreamingVideoQADataset(str(tmp_path / "shards"), "val", training=False, num_frames=2)
    batch = collate_videoqa([streaming[i] for i in range(len(streaming))])
    assert batch["index"].tolist() == [0, 3] and batch["num_skipped"] == 1
    skipped = batch["skipped"][0]
    assert (skipped.cause, skipped.index, skipped.video_id) == ("undecodable_video", 2, "v2")
    assert skipped.path == str(tmp_path / "videos" / "v2.mp4")
    strict = StreamingVideoQADataset(
        str(tmp_path / "shards"), "val", training=False, num_frames=2, on_bad_video="raise"
    )
    with pytest.raises(VideoDecodeError, match=r"v2\.mp4: .*record 2 of the shards in .*'video_id'='v2'"):
        strict[1]


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no converted split here; write it with `vqa shards"):
        StreamingVideoQADataset(str(tmp_path), "train")
    with pytest.raises(ValueError, match="already `streaming`"):
        ShardSpec("streaming", {}, "train")
    with pytest.raises(ValueError, match="--frames and --size go together"):
        ShardSpec("synthetic_vqa", {}, "train", frames=4)


# ------------------------------------------------------------ fits (vqa fit with data.dataset: streaming)


def tiny_recipe(tmp: Path, input_dir: Path, **data: Any) -> Path:
    dim = 32
    cfg = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(tmp / "run"), "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False, "logger": False, "num_sanity_val_steps": 0},
        "model": {
            "backbone": {"name": "frame_cnn", "dim": dim, "channels": [8, 16, 32], "grid": 2, "temporal_kernel": 0},
            "text_encoder": {"name": "small_transformer", "dim": dim, "num_layers": 1, "num_heads": 2},
            "fusion": {"name": "cross_attention", "video_dim": dim, "text_dim": dim, "dim": dim, "num_layers": 1,
                       "num_heads": 2},
            "head": {"name": "answer_classifier", "in_dim": dim, "num_answers": 16},
            "objectives": [{"name": "answer_cross_entropy"}],
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "fused": True}},
        },
        "data": {"dataset": "streaming", "dataset_args": {"input_dir": str(input_dir), "num_frames": 2},
                 "batch_size": 4, "num_workers": 0, "test_split": None, "predict_split": None, **data},
    }  # fmt: skip
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic_shards")
    for split in ("train", "val"):
        convert(ShardSpec("synthetic_vqa", TINY_SYNTHETIC, split, part_size=8, chunk_bytes=20_000), out)
    return out


def recorder(path: Path) -> str:
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": "data.test_streaming.RecordBatches", "init_args": {"path": str(path)}}
    )


def test_a_recipe_trains_from_the_shards(tmp_path, synthetic_shards):
    log = tmp_path / "batches.jsonl"
    code, _ = run_vqa("fit", "--config", tiny_recipe(tmp_path, synthetic_shards), "--trainer.max_epochs=1",
                      "--trainer.enable_checkpointing=false", recorder(log))  # fmt: skip
    assert code == 0
    train = [r for r in rows(log) if r["stage"] == "train"]
    assert sorted(i for r in train for i in r["indices"]) == list(range(32))  # every sample once
    assert [r["indices"] for r in train] != [list(range(i, i + 4)) for i in range(0, 32, 4)]  # shuffled
    val = [i for r in rows(log) if r["stage"] == "val" for i in r["indices"]]
    assert val == list(range(16))  # evaluation in order


# ------------------------------------------------------------ object storage (a local S3 server)


@pytest.fixture
def s3_bucket(tmp_path) -> dict[str, Any]:
    """An S3 bucket ``videos`` on moto's server on a free local port (the S3 API over HTTP, as
    boto3 and LitData speak to AWS), and the ``storage_options`` that reach it."""
    pytest.importorskip("moto.server", reason="the object-storage test needs moto[server] (the test extra)")
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "aws_access_key_id": "test",
               "aws_secret_access_key": "test", "region_name": "us-east-1"}  # fmt: skip
    client = boto3.client("s3", **options)
    client.create_bucket(Bucket="videos")
    try:
        yield {"client": client, "storage_options": options}
    finally:
        server.stop()


def upload(client: Any, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "videos", f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_shards_in_object_storage_read_as_the_local_ones_and_train(tmp_path, synthetic_shards, s3_bucket):
    upload(s3_bucket["client"], synthetic_shards, "shards")
    options = s3_bucket["storage_options"]
    remote = StreamingVideoQADataset("s3://videos/shards", "val", training=False, num_frames=2,
                                     storage_options=options, cache_dir=str(tmp_path / "chunks"))  # fmt: skip
    local = StreamingVideoQADataset(str(synthetic_shards), "val", training=False, num_frames=2)
    assert len(local) == 16
    assert_same_samples(local, remote)
    assert any((tmp_path / "chunks").rglob("index.json"))  # LitData's download cache (chunks go once read)

    log = tmp_path / "batches.jsonl"
    recipe = tiny_recipe(
        tmp_path, synthetic_shards
    )  # pointed at the bucket below, as a user's recipe would be
    cfg = yaml.safe_load(recipe.read_text())
    cfg["data"]["dataset_args"].update(input_dir="s3://videos/shards", storage_options=options,
                                       cache_dir=str(tmp_path / "fit_chunks"))  # fmt: skip
    recipe.write_text(yaml.safe_dump(cfg))
    code, _ = run_vqa("fit", "--config", recipe, "--trainer.max_epochs=1", "--trainer.enable_checkpointing=false",
                      "--data.num_workers=2", recorder(log))  # fmt: skip
    assert code == 0
    train = [i for r in rows(log) if r["stage"] == "train" for i in r["indices"]]
    assert sorted(train) == list(range(32))
    assert sorted(i for r in rows(log) if r["stage"] == "val" for i in r["indices"]) == list(range(16))


def test_a_missing_bucket_path_names_it(s3_bucket):
    with pytest.raises(
        FileNotFoundError, match=r"s3://videos/nothing/train/vqa_shards.json: streaming: cannot read"
    ):
        StreamingVideoQADataset("s3://videos/nothing", "train", storage_options=s3_bucket["storage_options"])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resume_in_the_middle_of_an_epoch_neither_repeats_nor_skips(tmp_path, synthetic_shards, workers):
    """A ``vqa fit`` killed right after its checkpoint of step 3 (in the middle of the first epoch) and
    resumed with ``--ckpt_path last`` trains, step by step, on the batches of the run that was not
    interrupted (8 steps an epoch, 2 epochs)."""
    common = [
        "--trainer.max_epochs=2",
        "--checkpoint.every_n_train_steps=3",
        "--checkpoint.monitor=null",
        f"--data.num_workers={workers}",
    ]
    for name in ("straight", "stopped"):
        (tmp_path / name).mkdir()
    straight, stopped = (
        tiny_recipe(tmp_path / "straight", synthetic_shards),
        tiny_recipe(tmp_path / "stopped", synthetic_shards),
    )
    assert run_vqa("fit", "--config", straight, *common, recorder(tmp_path / "straight.jsonl"))[0] == 0
    interrupt = "--trainer.callbacks+=" + json.dumps(
        {"class_path": "data.test_streaming.InterruptAt", "init_args": {"step": 3}}
    )
    with pytest.raises(
        Exception, match="interrupted at step 3"
    ):  # (the class of the module jsonargparse imported)
        run_vqa("fit", "--config", stopped, *common, recorder(tmp_path / "stopped.jsonl"), interrupt)
    assert (
        run_vqa(
            "fit", "--config", stopped, *common, "--ckpt_path=last", recorder(tmp_path / "stopped.jsonl")
        )[0]
        == 0
    )

    def steps(path):
        return [(r["epoch"], r["step"], r["indices"]) for r in rows(path) if r["stage"] == "train"]

    want, got = steps(tmp_path / "straight.jsonl"), steps(tmp_path / "stopped.jsonl")
    assert len(want) == 16 and [s for _, s, _ in got] == list(range(1, 17))  # none repeated, none lost
    assert got == want


DDP_TIMEOUT = 480


@pytest.mark.slow
def test_two_processes_with_two_workers_see_every_sample_once_per_epoch(tmp_path, synthetic_shards):
    log = tmp_path / "batches.jsonl"
    cmd = [sys.executable, "-m", "vqa_components.cli", "fit", "--config", str(tiny_recipe(tmp_path, synthetic_shards)),
           "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--data.num_workers=2",
           "--trainer.max_epochs=2", "--trainer.enable_checkpointing=false", recorder(log)]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=DDP_TIMEOUT, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = rows(log)
    assert {r["rank"] for r in found} == {0, 1}
    for epoch in (0, 1):
        for stage, n in (("train", 32), ("val", 16)):
            seen = [i for r in found if r["stage"] == stage and r["epoch"] == epoch for i in r["indices"]]
            assert sorted(seen) == list(range(n)), (stage, epoch, sorted(seen))
    orders = [[i for r in found if r["stage"] == "train" and r["epoch"] == e and r["rank"] == 0 for i in r["indices"]]
              for e in (0, 1)]  # fmt: skip
    assert orders[0] != orders[1]  # a new order every epoch
