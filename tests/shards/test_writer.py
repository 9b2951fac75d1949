"""The conversion: a conversion stopped in the middle (an exception in this process, or the process
group killed) is resumed by running it again, keeping the finished parts, converting each record once,
and giving byte for byte the shards of an uninterrupted run, with one worker or several."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqa_components.shards import writer
from vqa_components.shards.writer import PARTS_DIR, ShardSpec, convert

TINY_SYNTHETIC = {"num_train": 32, "num_val": 16, "num_test": 16, "clip_frames": 32, "clip_size": 32}


def assert_same_shards(a: Path, b: Path) -> None:
    assert json.loads((a / "index.json").read_text()) == json.loads((b / "index.json").read_text())
    names = sorted(p.name for p in a.glob("chunk-*.bin"))
    assert names == sorted(p.name for p in b.glob("chunk-*.bin")) and names
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_an_interrupted_conversion_keeps_its_finished_parts(tmp_path, monkeypatch):
    """A run stopped after 2 of 4 parts (with a half-written third) is resumed: the 2 are kept, the rest
    converted, and the shards are those of an uninterrupted run (which used 2 worker processes)."""
    spec = ShardSpec("synthetic_vqa", TINY_SYNTHETIC, "train", part_size=8)
    reference = convert(spec, tmp_path / "straight", workers=2)
    real = writer.convert_part
    written = []

    def stops_at_the_third(ds, spec_, number, parts_dir):
        if number == 2:
            (parts_dir / ".part-000002.tmp").mkdir()
            (parts_dir / ".part-000002.tmp" / "chunk-0-0.bin").write_bytes(b"half")
            raise KeyboardInterrupt
        written.append(number)
        return real(ds, spec_, number, parts_dir)

    monkeypatch.setattr(writer, "convert_part", stops_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        convert(spec, tmp_path / "resumed")
    monkeypatch.setattr(writer, "convert_part", lambda *a: (written.append(a[2]), real(*a))[1])
    report = convert(spec, tmp_path / "resumed")
    assert (report.reused, report.converted) == (2, 2) and sorted(written) == [0, 1, 2, 3]  # each part once
    assert_same_shards(tmp_path / "straight" / "train", tmp_path / "resumed" / "train")
    assert report.samples == reference.samples == 32
    assert not (tmp_path / "resumed" / PARTS_DIR).exists()


@pytest.mark.slow
def test_a_killed_conversion_resumes(tmp_path):
    """``vqa shards --workers 2`` killed (SIGKILL to its process group) once a few parts are done, then
    run again: it converts only the parts not done, and the shards equal an uninterrupted conversion's."""
    args = {**TINY_SYNTHETIC, "num_train": 64}
    spec = ShardSpec("synthetic_vqa", args, "train", part_size=2)
    convert(spec, tmp_path / "straight")  # (also generates the clips, so the killed run only converts)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vqa_components.cli", "shards", "--dataset", "synthetic_vqa", "--dataset_args",
           json.dumps(args), "--out", str(out), "--split", "train", "--part_size", "2", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    parts = out / PARTS_DIR / "train"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*"))) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "train" / "index.json").exists()  # killed in the middle
    done = len(list(parts.glob("part-*")))
    assert 3 <= done < 32
    report = convert(spec, out, workers=2)
    assert (report.reused, report.converted) == (done, 32 - done)  # nothing converted twice
    assert_same_shards(tmp_path / "straight" / "train", out / "train")
