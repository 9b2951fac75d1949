"""synthetic_vqa: determinism, exact answer balance, repair of broken files, decodable H.264."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from vqa_components.data import synthetic
from vqa_components.data.synthetic import (
    CHANCE_LEVEL,
    FAMILY_ANSWERS,
    SyntheticConfig,
    SyntheticVQADataset,
    ensure_generated,
    generate_sample,
)
from vqa_components.data.video_io import read_video_frames

SMALL = dict(num_train=32, num_val=16, num_test=16, clip_frames=32, clip_size=32)


def _records(folder, split):
    return json.loads((folder / f"{split}.json").read_text())


def test_generation_is_deterministic_across_folders(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    a = ensure_generated(cfg, tmp_path / "a", workers=1)
    b = ensure_generated(cfg, tmp_path / "b", workers=1)
    for split in ("train", "val", "test"):
        assert (a / f"{split}.json").read_bytes() == (b / f"{split}.json").read_bytes()
    ma, mb = (json.loads((f / "manifest.json").read_text())["files"] for f in (a, b))
    assert ma == mb  # same sha256 for every video


#: sha256 of the manifest's file table for SMALL, per PyAV release (each bundles its own FFmpeg and
#: x264, whose bytes may differ by design). Recorded on an AMD EPYC; with x264's cpu-independent
#: option every CPU must write the same bytes. A new PyAV release: add its line (check two machines).
MANIFEST_SHA256 = {"18.1.0": "935e39fe166bfed8a833fed929f6b95a8dba3a0bdff22c172940759f246be075"}


def test_generated_bytes_match_the_reference_of_this_pyav_release(tmp_path):
    import hashlib

    import av

    if av.__version__ not in MANIFEST_SHA256:
        pytest.skip(f"no reference bytes recorded for PyAV {av.__version__} (its FFmpeg/x264 may encode differently)")
    folder = ensure_generated(SyntheticConfig(**SMALL), tmp_path, workers=2)
    files = json.loads((folder / "manifest.json").read_text())["files"]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    assert digest == MANIFEST_SHA256[av.__version__]


GENERATE = (
    "import sys; from vqa_components.data.synthetic import SyntheticConfig, ensure_generated; "
    "print(ensure_generated(SyntheticConfig(num_train=32, num_val=16, num_test=16, clip_frames=32, clip_size=32), "
    "sys.argv[1], workers=2))"
)


@pytest.mark.slow  # several real processes
def test_two_processes_generating_one_folder_at_once(tmp_path):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", GENERATE, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0]
    assert sum("generating 64 clips" in o[1] for o in outs) == 1  # one generated, the other waited and reused
    folder = ensure_generated(SyntheticConfig(**SMALL), tmp_path, workers=1)
    assert folder.as_posix() == outs[0][0].strip()
    reference = ensure_generated(SyntheticConfig(**SMALL), tmp_path / "alone", workers=1)
    for name in ("manifest.json", "train.json", "val.json", "test.json"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    assert not list(folder.rglob("*.tmp*"))


def test_seed_changes_the_data():
    f0, r0 = generate_sample(SyntheticConfig(seed=0, **SMALL), "train", 3)
    f1, r1 = generate_sample(SyntheticConfig(seed=1, **SMALL), "train", 3)
    assert (r0.question_type, r0.answer) == (r1.question_type, r1.answer)  # the plan is fixed...
    assert not np.array_equal(f0, f1)  # ...the pixels are not


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_answers_are_exactly_balanced_per_family(tmp_path, split):
    folder = ensure_generated(SyntheticConfig(**SMALL), tmp_path, workers=1)
    recs = _records(folder, split)
    by_family: dict[str, Counter] = {}
    for r in recs:
        by_family.setdefault(r["question_type"], Counter())[r["answer"]] += 1
    assert set(by_family) == set(FAMILY_ANSWERS)
    for fam, counts in by_family.items():
        assert set(counts) == set(FAMILY_ANSWERS[fam])
        assert len(set(counts.values())) == 1, counts  # every answer equally often
    # a question-only model can at best learn the family -> answer prior: chance level
    for fam, counts in by_family.items():
        assert CHANCE_LEVEL[fam] == pytest.approx(max(counts.values()) / sum(counts.values()))


def test_question_text_does_not_leak_the_answer(tmp_path):
    folder = ensure_generated(SyntheticConfig(**SMALL), tmp_path, workers=1)
    for r in _records(folder, "train"):
        assert r["answer"] not in r["question"].split()
        assert r["caption"]  # one caption per clip, for pretraining objectives


def test_missing_and_corrupt_files_are_regenerated(tmp_path, caplog):
    cfg = SyntheticConfig(**SMALL)
    folder = ensure_generated(cfg, tmp_path, workers=1)
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    victim = folder / "videos" / "train_000005.mp4"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])  # truncated
    (folder / "videos" / "val_000001.mp4").unlink()
    (folder / "test.json").write_text("[{broken")
    ensure_generated(cfg, tmp_path, workers=1)
    assert victim.read_bytes() == good
    assert (folder / "videos" / "val_000001.mp4").is_file()
    assert json.loads((folder / "manifest.json").read_text())["files"] == manifest
    assert len(_records(folder, "test")) == 16
    assert "missing or corrupt" in caplog.text


def test_written_video_decodes_to_the_generated_frames(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    folder = ensure_generated(cfg, tmp_path, workers=1)
    for i in range(4):  # one clip of each family
        frames, rec = generate_sample(cfg, "train", i)
        decoded = read_video_frames(folder / "videos" / f"{rec.video_id}.mp4", cfg.clip_frames)
        ref = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        assert decoded.shape == ref.shape
        assert (decoded - ref).abs().mean() < 0.03, rec.question_type  # H.264 at crf 18: near-lossless


def test_families_carry_their_signal():
    cfg = SyntheticConfig(num_train=64, num_val=16, num_test=16)
    for i in range(16):
        frames, rec = generate_sample(cfg, "train", i)
        if rec.question_type == "needle":
            # three shapes, each visible for 3 of the 64 frames, never at the same time
            still = np.median(frames, axis=0).astype(np.uint8)
            shown = int((frames != still).any(axis=(1, 2, 3)).sum())
            assert shown == 9, shown
        if rec.question_type == "counting":
            lamp_on = frames.reshape(len(frames), -1).max(axis=1) >= 250
            runs = int(np.sum(lamp_on[1:] & ~lamp_on[:-1]) + lamp_on[0])
            assert runs == FAMILY_ANSWERS["counting"].index(rec.answer) + 1


def test_needle_answer_is_the_only_answer_coloured_object_and_is_brief():
    """The needle family's contract: one short event in an answer colour, named by the question."""
    cfg = SyntheticConfig(num_train=64, num_val=16, num_test=16, families=("needle",))
    for i in range(8):
        frames, rec = generate_sample(cfg, "train", i)
        shown = {}
        for name, rgb in synthetic._COLORS.items():
            hit = (frames == np.asarray(rgb, dtype=np.uint8)).all(-1).any(axis=(1, 2))
            if hit.any():
                shown[name] = np.flatnonzero(hit)
        assert list(shown) == [rec.answer], (rec, list(shown))
        on = shown[rec.answer]
        assert len(on) == 3 and np.all(np.diff(on) == 1)  # 3 consecutive frames of 64
        asked = next(shape for shape in synthetic._SHAPES if shape in rec.question)
        assert f"a {rec.answer} {asked}" in rec.caption


def test_sizes_must_keep_answers_balanced():
    with pytest.raises(ValueError, match="multiple of 16"):
        SyntheticConfig(num_train=30)
    with pytest.raises(ValueError, match="unknown families"):
        SyntheticConfig(families=("spatial", "colour"))


def test_dataset_samples_and_family_subset(tmp_path):
    ds = SyntheticVQADataset(split="val", root=str(tmp_path), families=["motion", "needle"], num_frames=8,
                             frame_size=32, **{**SMALL, "num_train": 32, "num_val": 16})
    assert ds.answer_vocab == list(FAMILY_ANSWERS["motion"] + FAMILY_ANSWERS["needle"])
    assert ds.families == ["motion", "needle"]
    s = ds[0]
    assert s["video"].shape == (8, 3, 32, 32)
    assert s["video"].dtype == torch.uint8 and int(s["video"].max()) > 100  # pixels, scaled by the model
    assert ds.answer_vocab[s["answer_idx"]] == s["answer"]
    assert s["family"] in ("motion", "needle")


def test_default_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(synthetic.CACHE_ENV, str(tmp_path))
    assert synthetic.default_root() == tmp_path / "synthetic_vqa"
