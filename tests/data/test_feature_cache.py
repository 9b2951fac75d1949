"""FeatureCache: exact features, content keys, fingerprints, atomic writes, memory mapping, and training
a model from the cache (epochs after the first decode nothing and run no backbone)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import open_clip  # noqa: F401  (a hard dependency: a broken install fails here instead of skipping)
import pytest
import torch

from vqa_components import create
from vqa_components.backbones.open_clip import OpenClipBackbone
from vqa_components.data import feature_cache as fc
from vqa_components.data.datamodule import collate_videoqa
from vqa_components.data.dataset import VideoQADataset
from vqa_components.data.feature_cache import (
    CachedClip,
    FeatureCache,
    backbone_fingerprint,
    video_content_key,
)
from vqa_components.data.video_io import write_video
from vqa_components.model import VideoQAModel

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
ANSWERS = ["red", "green", "blue"]


def tiny_backbone(seed: int = 0, **kw) -> OpenClipBackbone:
    torch.manual_seed(seed)
    return OpenClipBackbone("tiny", model_config=TINY, **kw)


@pytest.fixture
def video_data(tmp_path) -> tuple[Path, Path]:
    """Three real H.264 clips and an annotation file with four questions (two on the same clip)."""
    vids = tmp_path / "videos"
    vids.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        frames = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
        write_video(vids / f"v{i}.mp4", frames)
    records = [
        {"video_id": "v0", "question": "what color is it?", "answer": "red", "question_type": "color"},
        {"video_id": "v1", "question": "which color shows?", "answer": "green", "question_type": "color"},
        {"video_id": "v2", "question": "what color is the box?", "answer": "blue", "question_type": "color"},
        {"video_id": "v0", "question": "what is the colour?", "answer": "red", "question_type": "color"},
    ]
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(records))
    return ann, vids


# ------------------------------------------------------------------ features


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cache_returns_the_backbone_features(tmp_path, dtype):
    bb = tiny_backbone()
    cache = FeatureCache(tmp_path / "cache", bb, dtype=dtype)
    clip = torch.rand(5, 3, 32, 32)
    ref = bb(clip[None])
    tokens, cls = cache.get_or_compute("clip0", lambda: clip)
    assert tokens.shape == (5, 16, 32) and cls.shape == (5, 32) and tokens.dtype == torch.float32

    def must_not_decode() -> torch.Tensor:
        raise AssertionError("a cached clip was decoded again")

    again = cache.get_or_compute("clip0", must_not_decode)
    if dtype == "float32":
        assert torch.equal(tokens, ref.tokens[0]) and torch.equal(cls, ref.cls[0])
        assert torch.equal(again[0], ref.tokens[0]) and torch.equal(again[1], ref.cls[0])
    else:
        assert cache.load("clip0", dtype=None)[0].dtype == torch.float16
        torch.testing.assert_close(tokens, ref.tokens[0], rtol=2e-3, atol=2e-3)
        assert torch.equal(again[0], ref.tokens[0].half().float())
    assert cache.keys() == ["clip0"] and len(cache) == 1 and "clip0" in cache


def test_load_is_memory_mapped(tmp_path):
    cache = FeatureCache(tmp_path / "cache", tiny_backbone(), dtype="float32")
    cache.save("k1", torch.rand(3, 16, 32), torch.rand(3, 32))
    tokens, _ = cache.load("k1")
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    target = str((cache.path / "k1"[:2] / "k1" / "tokens.npy").resolve())
    ptr = tokens.data_ptr()
    mapped = False
    for line in maps.read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) >= 6 and fields[5] == target and lo <= ptr < hi:
            mapped = True
    assert mapped, "tokens are not backed by a memory map of tokens.npy"
    tokens += 1  # copy-on-write: the file is not modified
    assert not torch.equal(cache.load("k1")[0], tokens)


def test_rejects_trainable_or_uncacheable_backbones(tmp_path):
    with pytest.raises(ValueError, match="frozen"):
        FeatureCache(tmp_path, tiny_backbone(frozen=False))
    cnn = create("backbone", "frame_cnn", dim=16, channels=(8, 16), grid=2)
    cnn.requires_grad_(False)
    with pytest.raises(ValueError, match="not cacheable"):
        FeatureCache(tmp_path, cnn)
    with pytest.raises(ValueError, match="key"):
        FeatureCache(tmp_path, tiny_backbone()).has("../escape")


def test_rejects_several_streams_in_one_line(tmp_path):
    two = create("backbone", "multi_stream", backbones=["blind", "blind"])  # no weights, cacheable
    with pytest.raises(ValueError) as err:
        FeatureCache(tmp_path, two)
    assert str(err.value) == (
        "feature cache: backbone multi_stream gives 2 streams, but the cache stores the tokens and cls of one "
        "stream; remove feature_cache or use a single-stream backbone"
    )

    class Sneaky(type(tiny_backbone())):  # a backbone that does not say it has streams
        def forward(self, video):
            out = super().forward(video)
            return out.replace(streams=(out, out, out))

    torch.manual_seed(0)
    sneaky = Sneaky("tiny", model_config=TINY)
    with pytest.raises(ValueError, match=r"^feature cache: backbone open_clip gives 3 streams, but") as err:
        FeatureCache(tmp_path, sneaky).compute(torch.rand(2, 3, 32, 32))
    assert "\n" not in str(err.value)


# ----------------------------------------------------------- keys, fingerprint


def test_content_key_follows_bytes_and_decode_args(tmp_path, video_data):
    _, vids = video_data
    a = video_content_key(vids / "v0.mp4", num_frames=4, size=32)
    assert a == video_content_key(vids / "v0.mp4", size=32, num_frames=4)  # argument order does not matter
    shutil.copy(vids / "v0.mp4", tmp_path / "moved.mp4")
    assert video_content_key(tmp_path / "moved.mp4", num_frames=4, size=32) == a  # content, not path
    assert video_content_key(vids / "v0.mp4", num_frames=8, size=32) != a
    assert video_content_key(vids / "v0.mp4", num_frames=4, size=64) != a
    assert video_content_key(vids / "v1.mp4", num_frames=4, size=32) != a
    # same path, new bytes: the memo (path, size, mtime) must not serve the old hash
    data = bytearray((tmp_path / "moved.mp4").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "moved.mp4").write_bytes(bytes(data))
    os.utime(tmp_path / "moved.mp4", ns=(1, 1))
    assert video_content_key(tmp_path / "moved.mp4", num_frames=4, size=32) != a


def test_dataset_video_key_depends_on_decoding(video_data, tmp_path):
    ann, vids = video_data
    kw = {"annotation_file": str(ann), "video_dir": str(vids), "answer_vocab": ANSWERS, "frame_size": 32}
    four = VideoQADataset(num_frames=4, feature_cache=str(tmp_path / "c"), feature_cache_fingerprint="x", **kw)
    eight = VideoQADataset(num_frames=8, **kw)
    assert four.video_key(0) == four.video_key(3)  # two questions, one clip
    assert four.video_key(0) != four.video_key(1)
    assert four.video_key(0) != eight.video_key(0)
    assert "video_key" not in eight[0]  # only with a feature cache
    assert four[0]["video_key"] == four.video_key(0)


def test_fingerprint_changes_with_weights_and_config(tmp_path):
    a, same = tiny_backbone(0), tiny_backbone(0)
    assert backbone_fingerprint(a) == backbone_fingerprint(same)
    assert backbone_fingerprint(tiny_backbone(1)) != backbone_fingerprint(a)  # other weights
    assert backbone_fingerprint(tiny_backbone(0, project=False)) != backbone_fingerprint(a)  # other output
    assert backbone_fingerprint(tiny_backbone(0, image_size=48)) != backbone_fingerprint(a)
    cache = FeatureCache(tmp_path, a)
    cache.save("k", torch.rand(2, 16, 32), torch.rand(2, 32))
    assert FeatureCache(tmp_path, same).has("k")
    with torch.no_grad():
        same.visual.conv1.weight[0, 0, 0, 0] += 1e-3  # a fine-tuned checkpoint, say
    changed = FeatureCache(tmp_path, same)
    assert changed.fingerprint != cache.fingerprint and not changed.has("k")  # invalidated
    assert json.loads((cache.path / "meta.json").read_text())["backbone"].endswith("OpenClipBackbone")


# ------------------------------------------------------------- atomic writes


def test_interrupted_save_leaves_no_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path, tiny_backbone())
    real_save = np.save
    calls = []

    def dying_save(f, arr, *a, **kw):
        calls.append(1)
        if len(calls) == 2:  # tokens.npy written, dies while writing cls.npy
            raise KeyboardInterrupt("killed mid-write")
        return real_save(f, arr, *a, **kw)

    monkeypatch.setattr(fc.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        cache.save("k", torch.rand(2, 16, 32), torch.rand(2, 32))
    assert not cache.has("k") and cache.keys() == []
    assert not any(p.name.startswith(".tmp-") for p in cache.path.rglob("*"))  # cleaned up
    monkeypatch.setattr(fc.np, "save", real_save)
    tokens = torch.rand(2, 16, 32)
    cache.save("k", tokens, torch.rand(2, 32))
    assert cache.has("k") and torch.allclose(cache.load("k")[0], tokens.half().float())


def test_leftover_tmp_folder_of_a_killed_writer(tmp_path):
    cache = FeatureCache(tmp_path, tiny_backbone(), dtype="float32")
    leftover = cache.path / "kk" / ".tmp-kk1-99999-dead"
    leftover.mkdir(parents=True)
    np.save(leftover / "tokens.npy", np.zeros((2, 16, 32), np.float32))  # cls.npy never written
    assert not cache.has("kk1") and len(cache) == 0
    tokens, cls = torch.rand(2, 16, 32), torch.rand(2, 32)
    cache.save("kk1", tokens, cls)
    assert torch.equal(cache.load("kk1")[0], tokens) and cache.keys() == ["kk1"]
    assert leftover.exists()  # a fresh .tmp may belong to a live writer: kept by default
    assert cache.clean(max_age=0) == 1 and not leftover.exists()
    leftover.mkdir()
    FeatureCache(tmp_path, cache.backbone, stale_after=0)  # opening removes stale leftovers
    assert not leftover.exists() and cache.has("kk1")


def test_concurrent_writers_of_one_entry(tmp_path):
    a = FeatureCache(tmp_path, tiny_backbone(), dtype="float32")
    b = FeatureCache(tmp_path, tiny_backbone(), dtype="float32")
    first = torch.rand(2, 16, 32)
    a.save("k", first, torch.rand(2, 32))
    b.save("k", torch.rand(2, 16, 32), torch.rand(2, 32))  # loses the race, must not fail
    assert torch.equal(a.load("k")[0], first)


WRITER = """
import sys, torch
from vqa_components.backbones.open_clip import OpenClipBackbone
from vqa_components.data.feature_cache import FeatureCache
torch.manual_seed(0)
bb = OpenClipBackbone("tiny", model_config=%r)
cache = FeatureCache(sys.argv[1], bb, dtype="float32")
rank = int(sys.argv[2])
for i in range(40):  # both writers race for every shared key; each also writes keys of its own
    value = torch.full((2, 16, 32), float(i))
    cache.save(f"shared{i}", value, value[:, 0])
    cache.save(f"own{rank}-{i}", value + rank, value[:, 0] + rank)
    tokens, _ = cache.load(f"shared{i}")
    assert torch.equal(tokens, value), i
print("ok")
""" % (TINY,)


@pytest.mark.slow  # several real processes
def test_two_processes_writing_one_cache_at_once(tmp_path):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 and "ok" in o[0] for p, o in zip(procs, outs)), [o[1][-2000:] for o in outs]
    cache = FeatureCache(tmp_path, tiny_backbone(), dtype="float32")
    assert len(cache.keys()) == 40 * 3
    for i in range(40):
        assert torch.equal(cache.load(f"shared{i}")[0], torch.full((2, 16, 32), float(i)))
        for r in range(2):
            assert torch.equal(cache.load(f"own{r}-{i}")[1], torch.full((2, 32), float(i + r)))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


# ---------------------------------------------------------- model integration


def tiny_model(bb: OpenClipBackbone, **kw) -> VideoQAModel:
    torch.manual_seed(1)
    return VideoQAModel(
        backbone=bb,
        text_encoder=create("text_encoder", "small_transformer", dim=32, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=32, text_dim=32, dim=32, num_layers=1, num_heads=2),
        head=create("head", "answer_classifier", in_dim=32, num_answers=len(ANSWERS), dropout=0.0),
        objectives=[create("objective", "answer_cross_entropy")],
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        **kw,
    )


def train_two_epochs(video_data, cache_root: str | None):
    """Fit 2 epochs; returns per-step losses and, per epoch, (cache stats, decodes, backbone forwards)."""
    import lightning.pytorch as pl

    ann, vids = video_data
    # the dataset is built before the model: it learns the fingerprint lazily
    ds = VideoQADataset(
        annotation_file=str(ann), video_dir=str(vids), answer_vocab=ANSWERS, num_frames=4, frame_size=32,
        feature_cache=cache_root,
    )
    decodes = []
    read = ds._read_video
    ds._read_video = lambda i: decodes.append(i) or read(i)  # type: ignore[method-assign]
    bb = tiny_backbone()
    forwards = []
    bb.register_forward_hook(lambda *_: forwards.append(1))
    model = tiny_model(bb, feature_cache=cache_root, allow_random_frozen=True)  # a random tiny ViT, on purpose
    losses, epochs = [], []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

        def on_train_epoch_end(self, trainer, pl_module):
            stats = dict(pl_module.feature_cache.stats) if pl_module.feature_cache is not None else {}
            epochs.append((stats, len(decodes), len(forwards)))

    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_videoqa)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
    )
    trainer.fit(model, train_dataloaders=loader)
    return losses, epochs, model


def test_training_from_the_cache_matches_and_skips_decoding_and_backbone(video_data, tmp_path):
    plain_losses, plain_epochs, _ = train_two_epochs(video_data, None)
    assert plain_epochs[1][1] == 8 and plain_epochs[1][2] == 4  # without cache: everything twice

    losses, epochs, model = train_two_epochs(video_data, str(tmp_path / "cache"))
    assert len(losses) == len(plain_losses) == 4
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1e-5, atol=1e-6)
    (stats1, decodes1, fwd1), (stats2, decodes2, fwd2) = epochs
    # epoch 1: the 3 distinct clips decoded and computed once each; the 4th question (clip v0 again,
    # in the second batch) is already served from the cache by the dataset
    assert stats1 == {"misses": 3, "served": 1}
    assert decodes1 == 3 and fwd1 == 3
    # epoch 2: all 4 samples served by the dataset: no decode, no backbone forward
    assert stats2 == {"misses": 3, "served": 5}
    assert decodes2 == decodes1 and fwd2 == fwd1
    assert len(model.feature_cache) == 3


def test_cached_features_equal_the_backbone_on_the_dataset_clip(video_data, tmp_path):
    ann, vids = video_data
    bb = tiny_backbone()
    model = tiny_model(bb, feature_cache=str(tmp_path / "c"))  # built first: publishes its fingerprint
    ds = VideoQADataset(
        annotation_file=str(ann), video_dir=str(vids), answer_vocab=ANSWERS, num_frames=4, frame_size=32,
        feature_cache=str(tmp_path / "c"),
    )
    assert ds.feature_cache_fingerprint == model.feature_cache.fingerprint
    miss = ds[1]
    assert isinstance(miss["video"], CachedClip) and not miss["video"].cached
    batch = collate_videoqa([miss])
    out = model(batch)
    pixels = miss["video"].video
    pixels = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels  # datasets may emit uint8
    ref = bb(pixels[None])
    assert torch.equal(out.video.tokens, ref.tokens) and torch.equal(out.video.cls, ref.cls)
    hit = ds[1]["video"]
    assert hit.cached and hit.video is None
    assert torch.equal(hit.tokens, ref.tokens[0]) and torch.equal(hit.cls, ref.cls[0])
    # a mix of served and decoded clips in one batch
    mixed = collate_videoqa([ds[1], ds[2]])
    assert isinstance(mixed["video"], list) and mixed["video"][0].cached and not mixed["video"][1].cached
    assert model(mixed).logits.shape == (2, len(ANSWERS))


def test_pixel_batches_with_keys_use_the_cache(video_data, tmp_path):
    """A dataset that only adds video_key (fingerprint unknown) still skips the backbone on hits."""
    ann, vids = video_data
    model = tiny_model(tiny_backbone(), feature_cache=str(tmp_path / "c"))
    ds = VideoQADataset(
        annotation_file=str(ann), video_dir=str(vids), answer_vocab=ANSWERS, num_frames=4, frame_size=32,
        feature_cache=str(tmp_path / "other_root"),  # nothing published there
    )
    batch = collate_videoqa([ds[0], ds[3]])
    assert isinstance(batch["video"], torch.Tensor) and batch["video_key"][0] == batch["video_key"][1]
    model(batch)
    assert model.feature_cache.stats == {"misses": 1, "hits": 1}


def test_model_rejects_a_trainable_backbone_and_a_stale_fingerprint(video_data, tmp_path):
    with pytest.raises(ValueError, match="frozen"):
        tiny_model(tiny_backbone(frozen=False), feature_cache=str(tmp_path))
    model = tiny_model(tiny_backbone(), feature_cache=str(tmp_path))
    stale = CachedClip("k", "0" * 64, tokens=torch.zeros(4, 16, 32), cls=torch.zeros(4, 32))
    batch = {"video": [stale], "question": ["q?"], "batch_size": 1}
    with pytest.raises(ValueError, match="feature_cache_fingerprint"):
        model(batch)
