"""On-disk cache of a frozen backbone's per-frame features.

A frozen image tower (VideoDistill's CLIP ViT-B/16) maps the same frames to the
same features in every epoch, so a recipe can compute them once and train from
memory-mapped ``.npy`` files afterwards::

    root/
      <fingerprint>/                 one folder per (backbone class, config, weights)
        meta.json                    what the fingerprint stands for (for humans)
        ab/                          first two characters of the key
          ab12...ef/                 one entry = one folder, created by one rename
            tokens.npy               (t, n, d)
            cls.npy                  (t, d)
        .tmp-<key>-<pid>-<rand>/     an entry being written (ignored, cleaned)

* **Fingerprint** = sha256 over the backbone's class qualname, its ``config``
  dict (``repr`` when it has none) and the name, dtype, shape and bytes of every
  state-dict tensor. Changed weights or settings give a new folder; nothing
  stale is ever read.
* **Keys** name a video and how it was decoded: :func:`video_content_key`
  hashes the file's bytes together with the decoding arguments.
* **Atomic writes**: an entry is written into a temporary folder and renamed
  into place (``os.replace``). A reader sees the whole entry or none. A writer
  that dies leaves only a ``.tmp-*`` folder, which :meth:`FeatureCache.has`
  ignores and :meth:`FeatureCache.clean` removes. Two processes that write the
  same entry both succeed; the first rename wins.

Training from the cache (see ``docs/parts/feature_cache.md``):

* ``VideoQAModel(..., feature_cache=root)`` opens a :class:`FeatureCache` for its
  frozen, cacheable backbone and *publishes* ``root -> fingerprint`` in this
  process (:func:`active_fingerprint`).
* ``VideoQADataset(..., feature_cache=root)`` adds ``video_key`` to every sample
  and, once it knows the fingerprint (published, or
  ``feature_cache_fingerprint``), returns ``video`` as a :class:`CachedClip`:
  the memory-mapped features when the entry exists (no decoding), else the
  decoded pixels.
* ``VideoQAModel.encode_video`` hands the batch to :meth:`FeatureCache.encode`,
  which uses served features, loads hits, and runs the backbone only on misses
  (one clip at a time) and stores them. So every epoch after the first skips
  both the decoding and the backbone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from vqa_components.interfaces import VideoFeatures

FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_CHUNK = 1 << 20

# --------------------------------------------------------------------- keys

_content_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MB chunks), memoised by (path, size, mtime_ns)."""
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns)
    with _memo_lock:
        hit = _content_memo.get(memo_key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _memo_lock:
        _content_memo[memo_key] = digest
    return digest


def video_content_key(path: str | Path, **decode_args: Any) -> str:
    """Cache key of a video file decoded with ``decode_args`` (e.g. ``num_frames=8, size=224``).

    sha256 over the file's content hash and the sorted decoding arguments: the
    same bytes at another path give the same key; edited bytes or other
    arguments give another.
    """
    args = json.dumps(decode_args, sort_keys=True, default=repr)
    return hashlib.sha256(f"{file_sha256(path)}\n{args}".encode()).hexdigest()


def backbone_fingerprint(backbone: nn.Module) -> str:
    """sha256 over class qualname, ``config`` (or ``repr``) and every state-dict tensor."""
    h = hashlib.sha256()
    cls = type(backbone)
    h.update(f"vqa_components.feature_cache/v{FORMAT_VERSION}\n{cls.__module__}.{cls.__qualname__}\n".encode())
    config = getattr(backbone, "config", None)
    desc = json.dumps(config, sort_keys=True, default=repr) if isinstance(config, dict) else repr(backbone)
    h.update(desc.encode())
    for name, t in sorted(backbone.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


# ---------------------------------------------- fingerprints of this process

_active: dict[str, str] = {}


def _root_id(root: str | Path) -> str:
    return str(Path(root).expanduser().resolve())


def publish_fingerprint(root: str | Path, fingerprint: str) -> None:
    """Record that the backbone whose cache lives in ``root`` has ``fingerprint`` (latest wins)."""
    with _memo_lock:
        _active[_root_id(root)] = fingerprint


def active_fingerprint(root: str | Path) -> str | None:
    """The fingerprint last published for ``root`` in this process (by a model's cache), or ``None``."""
    with _memo_lock:
        return _active.get(_root_id(root))


# ------------------------------------------------------- read-only entries


def entry_dir(folder: str | Path, key: str) -> Path:
    """Folder of entry ``key`` inside a fingerprint folder (``root/<fingerprint>``)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(
            f"cache key {key!r} must be 1-200 characters of [A-Za-z0-9_.-] not starting with '.' "
            f"(use video_content_key)"
        )
    return Path(folder) / key[:2] / key


def has_entry(folder: str | Path, key: str) -> bool:
    """Whether the complete entry ``key`` exists (a ``.tmp-*`` folder never counts)."""
    entry = entry_dir(folder, key)
    return (entry / "tokens.npy").is_file() and (entry / "cls.npy").is_file()


def load_entry(folder: str | Path, key: str, dtype: torch.dtype | None = torch.float32) -> tuple[Tensor, Tensor]:
    """``(tokens (t, n, d), cls (t, d))`` of entry ``key``, memory-mapped; cast to ``dtype`` (``None``: as stored)."""
    entry = entry_dir(folder, key)
    if not has_entry(folder, key):
        raise KeyError(f"no cached features for {key!r} in {folder}")
    out = []
    for name in ("tokens.npy", "cls.npy"):
        # copy-on-write map: pages are read lazily, and torch gets a writable array
        t = torch.from_numpy(np.load(entry / name, mmap_mode="c"))
        out.append(t if dtype is None or t.dtype == dtype else t.to(dtype))
    return out[0], out[1]


@dataclass
class CachedClip:
    """One sample's ``video`` when its dataset serves a feature cache.

    Either ``tokens``/``cls`` are set (read from the cache: the clip was not
    decoded) or ``video`` holds the decoded pixels (a miss: the model runs the
    backbone and stores the result under ``key``). ``fingerprint`` names the
    backbone the features belong to. The collate function keeps these in a list.
    """

    key: str
    fingerprint: str
    tokens: Tensor | None = None
    cls: Tensor | None = None
    video: Tensor | tuple[Tensor, ...] | None = None

    @property
    def cached(self) -> bool:
        return self.tokens is not None


# -------------------------------------------------------------------- cache


def _backbone_name(backbone: nn.Module) -> str:
    return getattr(backbone, "registry_name", "") or type(backbone).__name__


def _streams_message(backbone: nn.Module, num_streams: int) -> str:
    return (
        f"feature cache: backbone {_backbone_name(backbone)} gives {num_streams} streams, but the cache stores "
        f"the tokens and cls of one stream; remove feature_cache or use a single-stream backbone"
    )


def _as_float(pixels: Tensor) -> Tensor:
    """``uint8`` pixels (as datasets may emit them) to floats in ``[0, 1]``, as the model does."""
    return pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels


class FeatureCache:
    """Per-video ``(tokens (t, n, d), cls (t, d))`` of one frozen backbone, stored under ``root``.

    Args:
        root: cache root; entries go to ``root/<fingerprint>/``.
        backbone: the frozen backbone whose outputs are cached (no parameter
            may require grad; ``cacheable`` must not be ``False``).
        dtype: storage precision, ``"float16"`` (half the disk and I/O) or
            ``"float32"`` (bitwise identical to the backbone's output).
        stale_after: seconds after which a leftover ``.tmp-*`` folder counts as
            abandoned and is removed when the cache opens.
    """

    def __init__(
        self,
        root: str | Path,
        backbone: nn.Module,
        dtype: Literal["float16", "float32"] = "float16",
        stale_after: float = 3600.0,
    ) -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        if getattr(backbone, "cacheable", True) is False:
            raise ValueError(f"{type(backbone).__name__} is not cacheable (its forward is not a pure function)")
        if getattr(backbone, "num_streams", 1) > 1:
            raise ValueError(_streams_message(backbone, backbone.num_streams))
        trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"FeatureCache needs a frozen backbone; {type(backbone).__name__} has trainable "
                f"parameters ({', '.join(trainable[:3])}{' ...' if len(trainable) > 3 else ''})"
            )
        self.backbone = backbone
        self.dtype = dtype
        self.fingerprint = backbone_fingerprint(backbone)
        self.root = Path(root)
        self.path = self.root / self.fingerprint
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_meta()
        self.clean(max_age=stale_after)
        #: ``served`` (features read by the dataset: no decoding, no backbone),
        #: ``hits`` (read here from pixels' keys: no backbone), ``misses`` (computed and stored).
        self.stats: Counter[str] = Counter()
        publish_fingerprint(self.root, self.fingerprint)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r}, dtype={self.dtype!r})"

    # --------------------------------------------------------------- layout
    def _entry(self, key: str) -> Path:
        return entry_dir(self.path, key)

    def _write_meta(self) -> None:
        meta_file = self.path / "meta.json"
        if meta_file.exists():
            return
        cls = type(self.backbone)
        meta = {
            "format_version": FORMAT_VERSION,
            "backbone": f"{cls.__module__}.{cls.__qualname__}",
            "config": getattr(self.backbone, "config", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        tmp = self.path / f"{_TMP_PREFIX}meta-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=repr))
        os.replace(tmp, meta_file)

    # ------------------------------------------------------------------ API
    def has(self, key: str) -> bool:
        return has_entry(self.path, key)

    def load(self, key: str, dtype: torch.dtype | None = torch.float32) -> tuple[Tensor, Tensor]:
        """``(tokens (t, n, d), cls (t, d))``, memory-mapped; cast to ``dtype`` (``None``: as stored)."""
        return load_entry(self.path, key, dtype)

    def save(self, key: str, tokens: Tensor, cls: Tensor) -> None:
        """Store one video's features; atomic (the entry appears whole or not at all)."""
        entry = self._entry(key)
        if tokens.ndim != 3 or cls.ndim != 2 or tokens.shape[0] != cls.shape[0]:
            raise ValueError(f"save expects tokens (t, n, d) and cls (t, d); got {tuple(tokens.shape)}, {tuple(cls.shape)}")
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f"{_TMP_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            for name, t in (("tokens.npy", tokens), ("cls.npy", cls)):
                arr = t.detach().to("cpu", getattr(torch, self.dtype)).contiguous().numpy()
                with open(tmp / name, "wb") as f:
                    np.save(f, arr)
                    f.flush()
                    os.fsync(f.fileno())
            try:
                os.replace(tmp, entry)
            except OSError:
                if self.has(key):  # another writer got there first: its entry is as good as ours
                    return
                shutil.rmtree(entry, ignore_errors=True)  # a damaged entry (edited by hand): replace it
                os.replace(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def get_or_compute(self, key: str, frames: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
        """Cached features of ``key``; on a miss run the backbone on ``frames()`` ``(t, 3, h, w)`` and store them."""
        if self.has(key):
            return self.load(key)
        video = frames()
        with torch.no_grad():
            feats = self.backbone(video.unsqueeze(0))
        tokens, cls = feats.tokens[0], feats.cls[0]
        self.save(key, tokens, cls)
        return self.load(key)

    def compute(self, video: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Backbone features of one clip ``(t, 3, h, w)`` (or a tuple of streams): ``tokens (t, n, d), cls (t, d)``."""
        dev = next((p.device for p in self.backbone.parameters()), None)
        if isinstance(video, (tuple, list)):
            clip: Tensor | tuple[Tensor, ...] = tuple(_as_float(v.unsqueeze(0).to(dev)) for v in video)
        else:
            clip = _as_float(video.unsqueeze(0).to(dev))
        with torch.no_grad():
            feats = self.backbone(clip)
        if feats.streams is not None:
            raise ValueError(_streams_message(self.backbone, len(feats.streams)))
        unstored = ["frame_mask"] if feats.frame_mask is not None else []
        unstored += ["extras"] if feats.extras else []
        if unstored:
            raise ValueError(
                f"feature cache: backbone {_backbone_name(self.backbone)} returns {' and '.join(unstored)}, "
                f"which the cache does not store (only tokens and cls); remove feature_cache to run the backbone"
            )
        return feats.tokens[0], feats.cls[0]

    def encode(
        self,
        video: Tensor | tuple[Tensor, ...] | Sequence[CachedClip],
        keys: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> VideoFeatures:
        """The backbone's features of a batch, through the cache.

        ``video`` is either a list of :class:`CachedClip` (a dataset serving this
        cache) or a pixel batch ``(b, t, 3, h, w)`` (or tuple of streams) with
        one ``key`` per clip. Misses are computed one clip at a time (so a
        clip's features do not depend on the batch it came in) and stored; the
        returned features are the stored values (cast to float32), identical in
        every epoch.
        """
        items: list[CachedClip]
        if isinstance(video, (list, tuple)) and video and isinstance(video[0], CachedClip):
            items = list(video)  # type: ignore[arg-type]
        else:
            if keys is None:
                raise ValueError("FeatureCache.encode: a pixel batch needs one key per clip (batch['video_key'])")
            streams = tuple(video) if isinstance(video, (tuple, list)) else (video,)
            if len(keys) != streams[0].shape[0]:
                raise ValueError(f"FeatureCache.encode: {len(keys)} keys for a batch of {streams[0].shape[0]} clips")
            items = [
                CachedClip(key=k, fingerprint=self.fingerprint, video=tuple(s[i] for s in streams) if len(streams) > 1 else streams[0][i])
                for i, k in enumerate(keys)
            ]
        tokens, cls = [], []
        storage = getattr(torch, self.dtype)
        for item in items:
            if item.cached:
                if item.fingerprint != self.fingerprint:
                    raise ValueError(
                        f"the dataset served cached features of backbone {item.fingerprint[:12]} but the model's "
                        f"backbone is {self.fingerprint[:12]} (weights or config changed after the dataset was "
                        f"built?); rebuild the dataset or pass feature_cache_fingerprint={self.fingerprint!r}"
                    )
                tok, c = item.tokens, item.cls
                self.stats["served"] += 1
            elif self.has(item.key):
                tok, c = self.load(item.key)
                self.stats["hits"] += 1
            else:
                if item.video is None:
                    raise ValueError(f"FeatureCache.encode: clip {item.key} has neither features nor pixels")
                tok, c = self.compute(item.video)
                self.save(item.key, tok, c)
                # what later epochs will read (rounded to the storage dtype)
                tok, c = tok.to(storage).float(), c.to(storage).float()
                self.stats["misses"] += 1
            tokens.append(tok.to(device=device, dtype=torch.float32))  # type: ignore[union-attr]
            cls.append(c.to(device=device, dtype=torch.float32))  # type: ignore[union-attr]
        return VideoFeatures(tokens=torch.stack(tokens), cls=torch.stack(cls))

    def delete(self, key: str) -> None:
        shutil.rmtree(self._entry(key), ignore_errors=True)

    def keys(self) -> list[str]:
        return sorted(
            e.name
            for shard in self.path.iterdir()
            if shard.is_dir() and not shard.name.startswith(".")
            for e in shard.iterdir()
            if not e.name.startswith(".") and (e / "tokens.npy").is_file() and (e / "cls.npy").is_file()
        )

    def __contains__(self, key: str) -> bool:
        return self.has(key)

    def __len__(self) -> int:
        return len(self.keys())

    def clean(self, max_age: float = 0.0) -> int:
        """Remove ``.tmp-*`` leftovers of interrupted writes older than ``max_age`` seconds; returns how many.

        ``max_age=0`` removes all of them: only do that when no other process is writing.
        """
        now = time.time()
        removed = 0
        candidates = list(self.path.glob(f"{_TMP_PREFIX}*")) + list(self.path.glob(f"*/{_TMP_PREFIX}*"))
        for tmp in candidates:
            try:
                if now - tmp.stat().st_mtime < max_age:
                    continue
            except FileNotFoundError:
                continue
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
        return removed
