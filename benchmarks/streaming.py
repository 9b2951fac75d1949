"""Streaming shards against the folder dataset: clips per second out of the training loader, in one run.

The same clips (``synthetic_vqa``'s training split: real H.264 clips, 64 frames at 64x64) are read
three ways, each through the loader ``vqa fit`` builds for it (shuffled, ``collate_videoqa``), at
``num_workers`` 0 and 2, decoding the same frames (``--num_frames`` evenly spaced, ``--frame_size``):

* **folder**: ``synthetic_vqa`` (``VideoQADataset``: one MP4 file per clip) in a ``DataLoader``;
* **shards**: the ``streaming`` dataset over ``vqa shards``' LitData shards of those clips (the
  clips' bytes, decoded from memory) in its ``StreamingDataLoader``;
* **shards, decoded**: shards written with ``--frames`` ``--size`` (frames stored decoded: no
  decoding when read);
* **webdataset**: the same records as WebDataset tar shards (``webdataset.TarWriter``, a ``.mp4`` and a
  ``.json`` member per record, as many records per tar as the LitData shards have per chunk), read by
  a ``webdataset.WebDataset`` pipeline (shards shuffled, a shuffle buffer, split across workers) in a
  ``DataLoader`` and decoded by the same ``ShardDecoder`` as the LitData shards: the two formats
  compared with everything else equal (issue 22: "if WebDataset measures better here, say so").
  Measured when ``webdataset`` is installed (``pip install -e ".[bench]"``), else left out and said so.

Clips per second over a whole epoch after its first batch (worker start-up excluded), best of
``--repeats`` epochs; the conversion's own rate is recorded too. Goal (issue 22): shards read at
least as fast as the folder dataset. Writes ``benchmarks/results/streaming.json`` and ``streaming.png``::

    python -m benchmarks streaming            # 512 clips, 3 epochs each (~3 min on 2 cores)
    python -m benchmarks streaming --quick    # 128 clips, best of 2 epochs each (~1 min)
    python benchmarks/streaming.py --quick
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from benchmarks import _report
except ImportError:
    import _report

NAME = "streaming"
WORKERS = (0, 2)
VARIANTS = ("folder", "shards", "shards, decoded")
WEBDATASET = "webdataset"


def epoch_rate(loader: Any) -> tuple[float, int]:
    """(clips per second after the first batch, clips read) of one pass over ``loader``."""
    it = iter(loader)
    first = next(it)
    clips, start = 0, time.perf_counter()
    for batch in it:
        clips += int(batch["batch_size"])
    seconds = time.perf_counter() - start
    del first
    return (clips / seconds if seconds > 0 else float("nan")), clips


def build(args: Any, folder: Path) -> dict[str, Any]:
    """The datasets of each variant, and the conversions' figures."""
    from vqa_components.data.streaming import StreamingVideoQADataset
    from vqa_components.registry import DATASETS
    from vqa_components.shards.writer import ShardSpec, convert

    source = {"num_train": args.clips, "num_val": 16, "num_test": 16, "num_frames": args.num_frames,
              "frame_size": args.frame_size}  # fmt: skip
    reading = {"num_frames": args.num_frames, "frame_size": args.frame_size}
    datasets: dict[str, Any] = {
        "folder": DATASETS.get("synthetic_vqa")(split="train", training=True, **source)
    }
    conversions = {}
    for variant, extra in (
        ("shards", {}),
        ("shards, decoded", {"frames": args.num_frames, "size": args.frame_size}),
    ):
        out = folder / variant.replace(", ", "_")
        report = convert(ShardSpec("synthetic_vqa", source, "train", part_size=64, **extra), out, workers=2)
        conversions[variant] = {"clips_per_s": round(report.samples / report.seconds, 1), "chunks": report.chunks,
                                "mib": round(report.bytes / 2**20, 2), "workers": 2}  # fmt: skip
        datasets[variant] = StreamingVideoQADataset(str(out), "train", training=True, **reading)
    folder_mib = (
        sum(os.path.getsize(datasets["folder"].video_path(i)) for i in range(len(datasets["folder"]))) / 2**20
    )
    conversions["folder"] = {"mib": round(folder_mib, 2)}
    try:
        import webdataset  # noqa: F401
    except ImportError:
        pass
    else:
        datasets[WEBDATASET], conversions[WEBDATASET] = webdataset_shards(datasets["shards"], folder / "wds")
    return {"datasets": datasets, "conversions": conversions}


class WebDatasetReader:
    """The records of ``vqa shards``' LitData shards, written as WebDataset tars and read back through a
    ``webdataset.WebDataset`` pipeline into the samples the ``streaming`` dataset returns."""

    def __init__(self, urls: list[str], decoder: Any, shuffle_buffer: int) -> None:
        self.urls, self.decoder, self.shuffle_buffer = urls, decoder, shuffle_buffer

    def sample(self, record: dict[str, Any]) -> Any:
        return self.decoder({"video": record["mp4"], "meta": record["json"]})

    def pipeline(self) -> Any:
        import webdataset as wds

        return (
            wds.WebDataset(
                self.urls, shardshuffle=len(self.urls), workersplitter=wds.split_by_worker, empty_check=False
            )
            .shuffle(self.shuffle_buffer)
            .map(self.sample)
        )


def webdataset_shards(shards: Any, out: Path) -> tuple[WebDatasetReader, dict[str, Any]]:
    """WebDataset tars of the records of ``shards`` (a ``StreamingVideoQADataset``), as many records per
    tar as its chunks hold, and the conversion's figures (from the LitData records: no decoding)."""
    import webdataset as wds
    from litdata import StreamingDataset

    raw = StreamingDataset(shards.location)  # the stored records, not decoded
    per_tar = max(1, len(raw) // max(1, len(raw.subsampled_files)))
    out.mkdir(parents=True, exist_ok=True)
    urls, start = [], time.perf_counter()
    for first in range(0, len(raw), per_tar):
        urls.append(str(out / f"shard-{len(urls):05d}.tar"))
        with wds.TarWriter(urls[-1]) as tar:
            for i in range(first, min(first + per_tar, len(raw))):
                record = raw[i]
                tar.write(
                    {"__key__": f"{i:08d}", "mp4": bytes(record["video"]), "json": record["meta"].encode()}
                )
    seconds = time.perf_counter() - start
    reader = WebDatasetReader(urls, shards.decoder, shuffle_buffer=per_tar)
    mib = sum(os.path.getsize(u) for u in urls) / 2**20
    return reader, {"mib": round(mib, 2), "tars": len(urls), "records_per_tar": per_tar,
                    "seconds": round(seconds, 3), "from": "the LitData shards' records, copied (no decoding)"}  # fmt: skip


def loader(variant: str, dataset: Any, workers: int, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    from vqa_components.data.datamodule import collate_videoqa

    if variant == "folder":
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate_videoqa
        )
    if variant == WEBDATASET:
        return DataLoader(
            dataset.pipeline(), batch_size=batch_size, num_workers=workers, collate_fn=collate_videoqa
        )
    return dataset.make_loader(batch_size=batch_size, num_workers=workers, collate_fn=collate_videoqa)


def measure(args: Any) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="vqa-bench-shards-"))
    try:
        built = build(args, tmp)
        variants = [v for v in (*VARIANTS, WEBDATASET) if v in built["datasets"]]
        rates: dict[str, dict[str, float]] = {v: {} for v in variants}
        for workers in WORKERS:
            for _ in range(args.repeats):  # variants interleaved, so that a change of load hits them alike
                for variant in variants:
                    rate, _ = epoch_rate(
                        loader(variant, built["datasets"][variant], workers, args.batch_size)
                    )
                    key = str(workers)
                    rates[variant][key] = max(rates[variant].get(key, 0.0), round(rate, 1))
        return {"clips_per_s": rates, "conversions": built["conversions"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def plot(result: dict[str, Any], path: Path) -> None:
    rates = result["clips_per_s"]
    with _report.panels(1, 6.5, 3.8, _report.plot_title(result), path) as (ax,):
        variants = list(rates)
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            values = [rates[variant][str(w)] for w in WORKERS]
            bars = ax.bar([x + i * width for x in range(len(WORKERS))], values, width, label=variant)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks([x + width for x in range(len(WORKERS))], [f"num_workers={w}" for w in WORKERS])
        ax.set_ylabel("clips / s (training loader)")
        ax.set_title(f"{result['config']['clips']} clips, {result['config']['num_frames']} frames at "
                     f"{result['config']['frame_size']}px", fontsize=9)  # fmt: skip
        ax.legend(fontsize=8)


def markdown(result: dict[str, Any]) -> str:
    """The table of docs/benchmarks.md: clips/s of each variant at each worker count, and the goal."""
    rates, conv = result["clips_per_s"], result["conversions"]
    rows = [
        [
            variant,
            *(f"{rates[variant][str(w)]:.0f}" for w in WORKERS),
            f"{conv[variant]['mib']:.1f}",
            f"{conv[variant]['clips_per_s']:.0f}" if "clips_per_s" in conv[variant] else "—",
        ]
        for variant in rates
    ]
    cfg = result["config"]
    table = _report.md_table(["read from", *(f"clips/s, {w} workers" for w in WORKERS), "MiB on disk",
                              "conversion clips/s (2 workers)"], rows)  # fmt: skip
    ratio = ", ".join(f"{r:.2f}x at {w} workers" for w, r in result["shards_over_folder"].items())
    if WEBDATASET in rates:
        wds = ", ".join(f"{r:.2f}x at {w} workers" for w, r in result["webdataset_over_shards"].items())
        wds = (f"WebDataset tars of the same records (copied from the LitData shards, so no conversion rate) "
               f"over the LitData shards: {wds}.")  # fmt: skip
    else:
        wds = 'WebDataset: not measured (`webdataset` is not installed: `pip install -e ".[bench]"`).'
    return (
        f"{cfg['clips']} clips, {cfg['num_frames']} frames at {cfg['frame_size']} px, batches of "
        f"{cfg['batch_size']}, best of {cfg['repeats']} epochs.\n\n{table}\n\nShards over folder: {ratio}. "
        f"Goal (shards at least as fast as the folder): {'met' if result['goal_met'] else '**not met**'}. {wds}\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = _report.parser(__doc__)
    p.add_argument("--clips", type=int, default=512, help="clips of the training split (a multiple of 16)")
    p.add_argument(
        "--repeats", type=int, default=3, help="epochs per variant and worker count (the best counts)"
    )
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--frame_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.repeats = 128, 2
    result: dict[str, Any] = {**_report.machine(), "benchmark": NAME, "quick": args.quick,
                              "goal": "shards read at least as fast as the folder dataset",
                              "config": {k: getattr(args, k) for k in ("clips", "repeats", "num_frames", "frame_size",
                                                                        "batch_size")}}  # fmt: skip
    result.update(measure(args))
    rates = result["clips_per_s"]
    result["shards_over_folder"] = {
        str(w): round(rates["shards"][str(w)] / rates["folder"][str(w)], 2) for w in WORKERS
    }
    result["goal_met"] = all(r >= 1.0 for r in result["shards_over_folder"].values())
    if WEBDATASET in rates:
        result["webdataset_over_shards"] = {
            str(w): round(rates[WEBDATASET][str(w)] / rates["shards"][str(w)], 2) for w in WORKERS
        }
    for w in WORKERS:
        print(f"num_workers={w}: " + ", ".join(f"{v} {rates[v][str(w)]:.0f}" for v in rates) + " clips/s "
              f"(shards / folder {result['shards_over_folder'][str(w)]:.2f})")  # fmt: skip
    return _report.finish(result, args.results, NAME, plot)


if __name__ == "__main__":
    sys.exit(main())
