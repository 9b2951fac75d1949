"""Weight files: how they are named, found and read, and how they are loaded into a part.

Every kind of part (backbones, text encoders, heads, ...) and the model read weights through this
module, so that there is one reader and one error for a file that does not fit:

* **Naming**: the file names looked for in a checkpoint folder (:data:`CHECKPOINT_FILE_NAMES`,
  :data:`TIMM_WEIGHT_FILES`, :data:`HF_WEIGHT_FILES`).
* **Resolving**: a local file or folder to the one file to read (:func:`resolve_checkpoint_file`),
  a local model folder (:func:`local_path`), or a local path or Hugging Face hub id
  (:func:`local_or_hub`).
* **Pretrained names, through the Hugging Face hub cache**, each resolved the way its library
  resolves it: ``transformers`` model ids (:func:`from_hub` around ``from_pretrained(id)``), timm
  ``NAME.TAG`` (:func:`timm_pretrained_file`), open_clip tags and ``hf-hub:`` names
  (:func:`open_clip_pretrained`). The cache is ``huggingface_hub.constants.HF_HUB_CACHE``
  (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``); with ``HF_HUB_OFFLINE=1`` only the cache is read,
  otherwise a missing file is downloaded as the library would. Missing and offline (or the hub
  unreachable): one :class:`~vqa_components.interfaces.ConfigError` line built by
  :func:`hub_missing_message` (the id, the cache folder, the ``hf download`` command that fills it).
  Nothing is downloaded unless a part is given such a name.
* **Reading**: :func:`read_checkpoint` (a torch file, always with ``weights_only=True``: no file
  can run code when it is loaded) and :func:`read_state_dict` (also ``.safetensors``, training
  checkpoints holding ``state_dict``, OpenAI's TorchScript CLIP archives; a DDP ``module.``
  prefix is stripped).
* **Loading into a part**: :func:`state_mismatch`, :func:`load_strict` (one
  :class:`~vqa_components.interfaces.ConfigError` naming the file and every mismatch) and
  :func:`load_weights` (resolve, read, adapt the keys, load strictly).

* **The model's weights**: ``init_from`` / ``init_parts`` / ``init_rename`` (:func:`init_from`,
  :func:`load_parts`), :func:`freeze` and :func:`idle_parts`, the check that no frozen part keeps
  its random initialisation (:func:`check_frozen_parts_have_weights`), where a module's weights came
  from (:func:`weights_source`), checkpoints of older versions (:func:`migrate_objective_keys`) and
  what a checkpoint may hold to stay readable with ``weights_only=True`` (:func:`loadable_hparams`).
  Parts inside the model are named by dotted paths (:func:`module_at`: ``objectives.mvm.tagger``).

::

    name ──────────────> file ──────────────────> state dict ─────────> part ─────────────> frozen?
    checkpoint: PATH     resolve_checkpoint_file  read_state_dict       load_strict          freeze
    init_from: PATH      (a folder: the first of  (.safetensors, .ckpt, load_parts           check_frozen_parts_
                          CHECKPOINT_FILE_NAMES)  TorchScript, module.)  (init_parts, rename)  have_weights
    pretrained: TAG      timm_pretrained_file,    (as above)            load_weights
    pretrained_path: ID  open_clip_pretrained     transformers' own     from_pretrained
                         (the hub cache)          from_pretrained(id), wrapped by from_hub
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

# ------------------------------------------------------------------- naming

#: File names looked for, in this order, when ``checkpoint`` is a folder (open_clip's first).
CHECKPOINT_FILE_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
)
#: The same for a timm model's folder (what a timm Hugging Face repository holds).
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
#: Weight files of a ``transformers`` ``save_pretrained`` folder that ``from_pretrained`` reads (one is enough).
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Non-parameter entries found in OpenAI CLIP archives (dropped without a note).
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# ---------------------------------------------------------------- resolving


def local_path(path: str | Path, what: str, owner: str = "hf_transformer") -> Path:
    """``path`` as a local path that exists (``what`` names the argument in the error); for an
    argument that also takes a Hugging Face hub id, :func:`local_or_hub`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{owner}: {what} {str(path)!r} is not a local path")
    return p


def resolve_checkpoint_file(
    checkpoint: str | Path, names: Iterable[str] = CHECKPOINT_FILE_NAMES, owner: str = ""
) -> Path:
    """The weights file ``checkpoint`` names: the file itself, or the first of ``names`` in a folder."""
    p = Path(checkpoint).expanduser()
    prefix = f"{owner}: " if owner else ""
    if p.is_dir():
        names = tuple(names)
        for name in names:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"{prefix}checkpoint folder {p} holds none of the expected weight files: {', '.join(names)}"
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"{prefix}checkpoint file not found: {p} (a local weights file or folder; nothing is downloaded)"
        )
    return p


# ------------------------------------- pretrained names (the Hugging Face hub cache)
#: file suffixes that make a missing path a file name, not a hub id (``vocab.txt``, ``model.pt``)
_FILE_SUFFIXES = (".txt", ".json", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".model", ".yaml", ".yml")


def hub_cache_dir() -> str:
    """The Hugging Face hub cache read now: ``huggingface_hub.constants.HF_HUB_CACHE`` (``$HF_HUB_CACHE``,
    default ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``), the folder transformers, timm and
    open_clip all read and fill."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether the hub libraries read only the cache (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def is_hub_id(name: str | Path) -> bool:
    """Whether ``name`` reads as a Hugging Face hub id (``NAME`` or ``ORG/NAME``, ``@REVISION`` allowed)
    rather than a local path: no leading ``/``, ``.`` or ``~``, at most one ``/``, no file suffix."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(name)
    repo = text.partition("@")[0]
    if not repo or repo[0] in "/.~" or repo.lower().endswith(_FILE_SUFFIXES) or "\\" in repo:
        return False
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


def local_or_hub(path: str | Path, what: str, owner: str) -> Path | str:
    """An existing local path (a :class:`~pathlib.Path`), or ``path`` itself when it reads as a hub id
    (:func:`is_hub_id`; the library then resolves it through the hub cache); else ``FileNotFoundError``."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if is_hub_id(path):
        return str(path)
    raise FileNotFoundError(
        f"{owner}: {what} {str(path)!r} is not a local path, nor a Hugging Face hub id (ORG/NAME)"
    )


def hub_missing_message(owner: str, what: str, name: str, repo_id: str, files: Sequence[str] = ()) -> str:
    """The one line for pretrained weights that are not in the hub cache while the hub cannot be
    read: the name and its hub id, the cache folder looked in, and the command that fills it."""
    cache = hub_cache_dir()
    why = "offline (HF_HUB_OFFLINE=1)" if hub_offline() else "the hub could not be reached"
    named = f"{name!r} (hub id {repo_id})" if name != repo_id else f"{name!r}"
    command = " ".join(["hf download", repo_id, *files])
    return (
        f"{owner}: {what} {named} is not in the Hugging Face cache {cache} and {why}; on a machine "
        f"with a network run `{command}`, then copy its cache folder (~/.cache/huggingface/hub, or "
        f"$HF_HUB_CACHE there) to {cache} here (or point HF_HUB_CACHE at the copy)"
    )


def _not_in_cache(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) says the file is neither cached nor reachable."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def from_hub(
    load: Callable[[], T], owner: str, what: str, name: str, repo_id: str | None = None, files: Sequence[str] = ()
) -> T:
    """``load()`` (a library's own ``from_pretrained(id)`` or hub download) with its errors as one
    :class:`~vqa_components.interfaces.ConfigError` line: :func:`hub_missing_message` when the
    files are not cached and the hub cannot be read (offline, unreachable), else the library's reason
    (an id the hub does not know, a file the repository lacks)."""
    try:
        return load()
    except OSError as exc:  # huggingface_hub's errors, transformers' OSError, open_clip's FileNotFoundError
        if hub_offline() or _not_in_cache(exc):
            raise ConfigError(hub_missing_message(owner, what, name, repo_id or name, files)) from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{owner}: {what} {name!r}: could not load it from the Hugging Face hub: {first}") from exc


def check_model_folder(folder: Path, owner: str) -> None:
    """Raise one clear ``FileNotFoundError`` unless ``folder`` holds ``config.json`` and a weights file."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{owner}: pretrained_path {str(folder)!r} is a file; pass the model folder")
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        missing.append(" or ".join(HF_WEIGHT_FILES))
    if missing:
        raise FileNotFoundError(
            f"{owner}: pretrained_path {str(folder)!r} is not a model folder (no {'; no '.join(missing)}); "
            f"write one with save_pretrained"
        )


def pretrained_model(from_pretrained: Callable[..., T], pretrained_path: str | Path, owner: str) -> tuple[T, str, Path | str]:
    """``(model, weights_source, where)`` of a transformers ``pretrained_path``: a local model folder
    (:func:`check_model_folder`, then ``from_pretrained(folder, local_files_only=True)``), or a hub id
    (:func:`local_or_hub`) read by ``from_pretrained(id)`` through the hub cache (:func:`from_hub`;
    ``weights_source`` ``hf-hub:ID``). ``where`` is the folder or the id (the tokenizer's default).
    On the meta device and inside :func:`weights_loaded_later` only its ``config.json`` is read and the
    model built from it (random weights; ``weights_source`` says where the weights would come from)."""
    where = local_or_hub(pretrained_path, "pretrained_path", owner)
    if not reads_pretrained_weights():  # the architecture only, from its config.json (meta device, model folders)
        source = hub_source(where) if isinstance(where, str) else str(where)  # where the weights would come from
        return _from_config(from_pretrained, where, owner), source, where
    if isinstance(where, str):  # a hub id, through the hub cache as transformers resolves it
        return from_hub(lambda: from_pretrained(where), owner, "pretrained_path", where), hub_source(where), where
    check_model_folder(where, owner)
    return from_pretrained(str(where), local_files_only=True), str(where), where


def _from_config(from_pretrained: Callable[..., T], where: Path | str, owner: str) -> T:
    """The model ``from_pretrained`` would load, built from the folder's or hub id's ``config.json``."""
    from transformers import AutoConfig

    if isinstance(where, str):
        config = from_hub(lambda: AutoConfig.from_pretrained(where), owner, "pretrained_path", where)
    else:
        config = AutoConfig.from_pretrained(str(where), local_files_only=True)
    cls = from_pretrained.__self__  # the model class (or AutoModel) whose from_pretrained was given
    return cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)


def hub_source(repo_id: str, filename: str | None = None) -> str:
    """What a part records as ``weights_source`` for weights read by name: ``hf-hub:REPO[/FILE]``."""
    return f"hf-hub:{repo_id}" + (f"/{filename}" if filename else "")


_WEIGHTS_LOADED_LATER: contextvars.ContextVar[bool] = contextvars.ContextVar("weights_loaded_later", default=False)


@contextlib.contextmanager
def weights_loaded_later() -> Iterator[None]:
    """Build parts whose every weight the caller loads afterwards (a model folder's
    ``model.safetensors``): pretrained names (open_clip tags, timm ``pretrained``) are not looked up,
    and a transformers ``pretrained_path`` folder needs only its ``config.json`` (the model is built
    from it with random weights)."""
    token = _WEIGHTS_LOADED_LATER.set(True)
    try:
        yield
    finally:
        _WEIGHTS_LOADED_LATER.reset(token)


def reads_pretrained_weights() -> bool:
    """Whether a part being built reads the weights its pretrained name points at: not on the meta
    device (:func:`building_on_meta`), not inside :func:`weights_loaded_later`."""
    return not building_on_meta() and not _WEIGHTS_LOADED_LATER.get()


def building_on_meta() -> bool:
    """Whether parts are being built on the meta device (``vqa profile``, wiring checks): then weights
    named by a pretrained name are not looked up (shapes do not depend on them)."""
    return torch.get_default_device().type == "meta"


def timm_pretrained_cfg(model_name: str, owner: str = "timm backbone") -> Any:
    """timm's pretrained config of ``model_name`` (``NAME`` or ``NAME.TAG``); an unknown tag is one
    :class:`ConfigError` line listing the architecture's pretrained names."""
    import timm

    try:
        return timm.get_pretrained_cfg(model_name, allow_unregistered=True)
    except RuntimeError as exc:  # a tag timm does not know
        tags = ", ".join(timm.list_pretrained(f"{model_name.partition('.')[0]}.*")[:8]) or "none"
        raise ConfigError(f"{owner}: {exc} Pretrained names: {tags}") from None


def timm_pretrained_file(model_name: str, owner: str = "timm backbone", *, download: bool = True) -> tuple[str, Path | None]:
    """``(source, file)``: timm's pretrained weights for ``model_name`` (``NAME`` for the default tag,
    or ``NAME.TAG``), found as ``timm.create_model(model_name, pretrained=True)`` finds them: the
    pretrained config's ``hf_hub_id`` (and ``hf_hub_filename``), ``model.safetensors`` before
    ``pytorch_model.bin``, through the hub cache. ``download=False``: only the source, no file."""
    cfg = timm_pretrained_cfg(model_name, owner)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ConfigError(
            f"{owner}: timm has no Hugging Face hub weights for {model_name!r} (pretrained names: "
            f"timm.list_pretrained('{model_name.partition('.')[0]}.*')); give a local checkpoint instead"
        )
    repo, _, revision = hub_id.partition("@")
    filename = getattr(cfg, "hf_hub_filename", None) or "pytorch_model.bin"
    names = [filename] if filename.endswith(".safetensors") else [
        "model.safetensors" if filename == "pytorch_model.bin" else filename.rsplit(".", 1)[0] + ".safetensors",
        filename,
    ]
    if not download:
        return hub_source(repo), None
    path, name = hub_file(repo, names, owner, "pretrained weights", model_name, revision=revision or None)
    return hub_source(repo, name), path


def hub_file(
    repo_id: str, filenames: Sequence[str], owner: str, what: str, name: str, revision: str | None = None
) -> tuple[Path, str]:
    """The first of ``filenames`` that ``huggingface_hub.hf_hub_download`` finds in ``repo_id`` (the
    cache, or the hub when online), with its name; one :class:`ConfigError` line (:func:`from_hub`,
    naming ``what`` ``name``) if none is found."""
    from huggingface_hub import hf_hub_download

    def first() -> tuple[Path, str]:
        last: OSError | None = None
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)), filename
            except OSError as exc:  # not cached / not in the repository: try the next name, as the libraries do
                last = exc
        assert last is not None
        raise last

    return from_hub(first, owner, what, name, repo_id, filenames[:1])


@dataclass
class OpenClipPretrained:
    """What an open_clip pretrained name resolves to (:func:`open_clip_pretrained`)."""

    #: the architecture to build: an open_clip model name, or the hub's config (``hf-hub:`` names)
    model_name: str
    model_config: dict[str, Any] | None
    #: the weights file in the hub cache (``None`` when not looked up: the meta device)
    file: Path | None
    #: ``weights_source``: ``hf-hub:REPO/FILE``
    source: str
    #: the name's preprocessing (mean, std, interpolation, resize_mode)
    preprocess: dict[str, Any] = field(default_factory=dict)
    #: the weights were trained with QuickGELU (OpenAI's): build with it
    quick_gelu: bool = False


def open_clip_pretrained(
    model_name: str,
    pretrained: str | None,
    owner: str,
    model_config: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
) -> OpenClipPretrained | None:
    """Resolve ``open_clip.create_model(model_name, pretrained=pretrained)``'s weights through the hub
    cache, with open_clip's own tables and download functions; ``None`` when nothing is named.

    * ``pretrained`` a tag (``openai``, ``laion2b_s34b_b88k``, ... ``open_clip.list_pretrained()``):
      the tag's ``hf_hub`` repository and file (``open_clip_model.safetensors`` before
      ``open_clip_pytorch_model.bin``), its preprocessing, and QuickGELU where the tag was trained
      with it (open_clip only warns; the ``-quickgelu`` model names build it).
    * ``model_name`` ``hf-hub:ORG/NAME``: the repository's ``open_clip_config.json`` (``model_cfg``,
      ``preprocess_cfg``) and its weights; ``pretrained`` must then be empty.

    The weights file is not looked up (``file`` ``None``) when the part's ``checkpoint`` replaces it
    (the tag still sets QuickGELU and preprocessing; an ``hf-hub:`` config is still read) or on the
    meta device. ``model_config`` (a custom architecture) takes no pretrained name.
    """
    import open_clip
    from open_clip.pretrained import download_pretrained_from_hf, get_pretrained_cfg

    if model_config is not None and (pretrained or model_name.startswith("hf-hub:")):
        raise ConfigError(f"{owner}: model_config builds a custom architecture: it takes no pretrained name "
                          f"(pretrained, hf-hub:); give its weights as checkpoint")
    if checkpoint is not None and pretrained:
        log.info("%s: checkpoint %s replaces the weights of %s %s", owner, checkpoint, model_name, pretrained)
    download = checkpoint is None and reads_pretrained_weights()

    if model_name.startswith("hf-hub:"):
        repo = model_name[len("hf-hub:") :]
        if pretrained:
            raise ConfigError(f"{owner}: {model_name!r} names its own weights; drop pretrained={pretrained!r}")
        cfg_file = from_hub(
            lambda: download_pretrained_from_hf(repo, filename="open_clip_config.json"),
            owner, "model_name", model_name, repo, ("open_clip_config.json", "open_clip_model.safetensors"),
        )
        config = json.loads(Path(cfg_file).read_text(encoding="utf-8"))
        if "model_cfg" not in config:
            raise ConfigError(f"{owner}: {cfg_file} (of {model_name!r}) has no model_cfg")
        file = None
        if download:
            file = Path(from_hub(lambda: download_pretrained_from_hf(repo), owner, "model_name", model_name, repo,
                                 ("open_clip_config.json", "open_clip_model.safetensors")))
        return OpenClipPretrained(
            model_name, dict(config["model_cfg"]), file, hub_source(repo, file.name if file else None),
            dict(config.get("preprocess_cfg", {})),
        )
    if not pretrained:
        return None
    name = model_name.replace("/", "-")
    cfg = get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ConfigError(
            f"{owner}: {pretrained!r} is not an open_clip pretrained tag of {model_name!r} (its tags: {tags}); "
            f"a local file goes in checkpoint"
        )
    if not cfg.get("hf_hub"):
        raise ConfigError(
            f"{owner}: open_clip's {model_name!r} {pretrained!r} has no Hugging Face hub file; download "
            f"{cfg.get('url') or 'it'} and pass it as checkpoint"
        )
    repo, filename = os.path.split(cfg["hf_hub"])
    first = ("open_clip_model.safetensors",) if not filename else (filename,)
    file = None
    if download:
        file = Path(from_hub(
            lambda: download_pretrained_from_hf(repo, filename=filename or None),
            owner, "pretrained", f"{model_name} {pretrained}", repo, first,
        ))
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return OpenClipPretrained(
        name, None, file, hub_source(repo, file.name if file else filename or None), preprocess,
        bool(cfg.get("quick_gelu", False)),
    )


# ------------------------------------------------------------------ reading


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` a local file with ``weights_only=True`` (tensors and plain values, no code).

    Reads ``torch.save`` state dicts and the Lightning checkpoints ``vqa fit`` writes. A file that
    needs arbitrary unpickling fails with one line naming it.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "Unsupported global" in line),
            lines[0] if lines else type(exc).__name__,
        )
        raise ConfigError(
            f"could not read {path} as a weights-only torch file ({reason}); load it in Python with "
            f"torch.load(weights_only=False) only if you trust it, and save its state_dict() (torch.save or safetensors)"
        ) from exc


def read_state_dict(checkpoint: str | Path, what: str = "") -> dict[str, Tensor]:
    """Read a state dict from a local file or folder, without executing pickled code.

    Accepts ``.safetensors``, ``torch.save`` files (read with ``weights_only=True``), training
    checkpoints holding ``state_dict``, and TorchScript archives (OpenAI's original CLIP files).
    A ``module.`` prefix on every key (DDP) is stripped; non-tensor entries are dropped, except a
    module's extra state (``*_extra_state``, e.g. the bert encoder's vocabulary). A file that
    cannot be read (a damaged ``.safetensors``, a truncated zip) raises
    :class:`~vqa_components.interfaces.ConfigError` naming it (and ``what`` it was read for).
    """
    path = resolve_checkpoint_file(checkpoint)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        elif _is_torchscript_archive(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = read_checkpoint(path)
    except (ConfigError, FileNotFoundError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"could not read weights file {path}{f' for {what}' if what else ''}: {first}"
        ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ConfigError(f"checkpoint {path} does not hold a state dict (got {type(state).__name__})")
    state = {str(k): v for k, v in state.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor) and not k.endswith("_extra_state")]
    if bad:
        state = {k: v for k, v in state.items() if k not in bad}
        unexpected = [k for k in bad if k not in _OPENAI_EXTRA_KEYS]
        if unexpected:
            log.debug("checkpoint %s: ignoring non-tensor entries %s", path, unexpected)
    return state


# ------------------------------------------------------------------ loading


def _preview(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_mismatch(module: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """Why ``state`` does not fit ``module`` exactly (missing, unexpected, other shapes), or ``None``."""
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in sorted(set(own) & set(state))
        # a module's extra state (``get_extra_state``, e.g. a vocabulary) is not a tensor: it has no shape
        if isinstance(state[k], Tensor) and isinstance(own[k], Tensor) and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:8])}")
    return "; ".join(parts) or None


def load_strict(module: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str) -> None:
    """``module.load_state_dict(state)`` with one error naming the file and every mismatch."""
    mismatch = state_mismatch(module, state)
    if mismatch:
        raise ConfigError(f"checkpoint {path} does not fit {what}: {mismatch}")
    module.load_state_dict(dict(state), strict=True)


def load_weights(
    module: nn.Module,
    checkpoint: str | Path,
    what: str,
    *,
    names: Iterable[str] = CHECKPOINT_FILE_NAMES,
    owner: str = "",
    adapt: Callable[[dict[str, Tensor]], Mapping[str, Tensor]] | None = None,
) -> Path:
    """Load a local weights file (or a folder holding one of ``names``) into ``module``, strictly.

    ``adapt`` maps the file's state dict to ``module``'s keys (drop a prefix, resize a position
    table) before the strict load. Returns the file read (what the part records as ``weights_source``).
    """
    path = resolve_checkpoint_file(checkpoint, names, owner)
    state = read_state_dict(path, what)
    if adapt is not None:
        state = dict(adapt(state))
    load_strict(module, state, path, what)
    return path


# ------------------------------------------------------- the model's weights
#: the model's parts, in the order they are listed and loaded
PART_NAMES = ("backbone", "text_encoder", "sampler", "fusion", "head", "objectives")


def part_names(model: nn.Module) -> list[str]:
    """The parts ``model`` has (those that are not ``None``)."""
    return [name for name in PART_NAMES if getattr(model, name, None) is not None]


def module_at(model: nn.Module, path: str, what: str) -> nn.Module:
    """The part or the module inside a part at the dotted ``path`` (``objectives.mvm.tagger``);
    :class:`ConfigError` naming ``what`` (the argument) and what exists there otherwise."""
    top, _, rest = path.partition(".")
    part = getattr(model, top, None) if top in PART_NAMES else None
    if part is None:
        raise ConfigError(f"{what}: model has no part {top!r}; parts: {', '.join(part_names(model))}")
    if not rest:
        return part
    try:
        return part.get_submodule(rest)
    except AttributeError:
        parent, _, _ = rest.rpartition(".")
        try:
            holder = part.get_submodule(parent) if parent else part
            inside = ", ".join(f"{path.rsplit('.', 1)[0]}.{k}" for k, _ in holder.named_children()) or "nothing"
        except AttributeError:
            inside = ", ".join(f"{top}.{k}" for k, _ in part.named_children()) or "nothing"
        raise ConfigError(f"{what}: model has no module {path!r}; there are: {inside}") from None


def freeze(model: nn.Module, paths: Iterable[str]) -> None:
    """Fix the weights of the parts or modules at ``paths`` (``requires_grad=False``); the model
    keeps them in eval mode (``VideoQAModel.train``)."""
    for path in paths:
        module_at(model, path, "freeze").requires_grad_(False)


def set_weights_source(module: nn.Module, source: str) -> None:
    """Record where ``module``'s weights came from (each objective of an objective dict on its own)."""
    module.weights_source = source
    for m in module.values() if isinstance(module, nn.ModuleDict) else module if isinstance(module, nn.ModuleList) else ():
        m.weights_source = source


def weights_source(model: nn.Module, path: str) -> str | None:
    """Where the weights of the module at ``path`` came from: its own ``weights_source``, or that of
    the nearest module above it that was loaded whole; ``None`` if they are its random init."""
    parts = path.split(".")
    source = getattr(module_at(model, path, "freeze"), "weights_source", None)
    while source is None and len(parts) > 1:
        parts.pop()
        source = getattr(module_at(model, ".".join(parts), "freeze"), "weights_source", None)
    return source


def migrate_objective_keys(state: dict[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """``state`` with objective weights saved by position (``objectives.0.*``, files written before
    objectives were kept by name) moved to the names of the model's objectives in recipe order."""
    old = [k for k in state if k.startswith("objectives.") and k.split(".")[1].isdigit()]
    if not old:
        return state
    out = {k: v for k, v in state.items() if k not in old}
    for k in old:
        _, index, rest = k.split(".", 2)
        out[f"objectives.{names[int(index)]}.{rest}" if int(index) < len(names) else k] = state[k]
    return out


def _label(path: str) -> str:
    """``part 'backbone'`` or ``module 'objectives.mvm.tagger'``, for messages."""
    return f"module {path!r}" if "." in path else f"part {path!r}"


def _preview_paths(paths: Sequence[str], near: str, n: int = 6) -> str:
    """Up to ``n`` of ``paths``, those sharing the longest prefix with ``near`` first."""
    ranked = sorted(paths, key=lambda p: (-len(os.path.commonprefix([p, near])), p))[:n]
    return ", ".join(ranked) + (", ..." if len(paths) > n else "")


def _why_not_loaded(part: nn.Module, sub: Mapping[str, Tensor]) -> str | None:
    """Why the default ``init_from`` leaves ``part`` as it is, given the file's weights ``sub`` for it."""
    if not part.state_dict():
        return "the model's part has no weights"
    if not sub:
        return "not in the file"
    mismatch = state_mismatch(part, sub)
    return f"does not fit: {mismatch}" if mismatch else None


def load_parts(
    model: nn.Module, path: str, parts: Sequence[str] | None = None, rename: Mapping[str, str] | None = None
) -> list[str]:
    """Load part weights into ``model`` from a Lightning checkpoint or a state dict (``init_from``);
    returns the parts loaded.

    ``parts`` named (parts or dotted paths to modules inside them): each must be in the file (under
    ``rename[path]`` if given) and fit exactly (else :class:`ConfigError`). ``parts`` empty or
    ``None``: every part (and every objective, by name) that both the model and the file have and
    whose weights fit; the others keep their weights, and why is logged at INFO.
    """
    if not Path(path).exists():
        raise ConfigError(f"init_from: no such checkpoint file: {path}")
    state = read_state_dict(path)
    objectives = list(model.objectives.keys())
    positions = {k.split(".")[1] for k in state if k.startswith("objectives.") and k.split(".")[1].isdigit()}
    if positions and max(int(i) for i in positions) < len(objectives):
        # a file written before objectives were kept by name: taken to be of the same recipe, in its order
        log.info("init_from %s: objectives by position, read as %s", path,
                 ", ".join(f"objectives.{i} -> objectives.{objectives[int(i)]}" for i in sorted(positions)))
        state = migrate_objective_keys(state, objectives)
    rename = dict(rename or {})
    named = list(parts or [])
    for name in rename:
        if name not in named:
            raise ConfigError(f"init_rename: {name!r} is not in init_parts {named}")
    in_file = {k.split(".", 1)[0] for k in state}
    present = part_names(model)
    modules = {name: module_at(model, name, "init_parts") for name in named}
    default = [n for n in present if n != "objectives"] + [f"objectives.{k}" for k in objectives]
    loaded: list[str] = []
    skipped: dict[str, str] = {}
    for name in named or default:
        part = modules[name] if named else module_at(model, name, "init_parts")
        source = rename.get(name, name)
        sub = {k[len(source) + 1 :]: v for k, v in state.items() if k.startswith(source + ".")}
        if named:
            if not sub and part.state_dict():
                top = source.split(".")[0]
                near = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith(top + ".")})
                hint = f"; under {top!r} it has: {_preview_paths(near, source)}" if near else ""
                raise ConfigError(
                    f"init_from: {path} holds no weights for {_label(source)} (it has parts: "
                    f"{', '.join(sorted(in_file & set(PART_NAMES))) or 'none'}{hint}); drop {name!r} from "
                    f"init_parts or map it with init_rename"
                )
            load_strict(part, sub, path, _label(name) + (f" (from {source!r})" if source != name else ""))
        else:
            why = _why_not_loaded(part, sub)
            if why:
                skipped[name] = why
                continue
            part.load_state_dict(sub)
        set_weights_source(part, f"{path} (init_from)")
        loaded.append(name if source == name else f"{name} (from {source})")
    for name in sorted(in_file & set(PART_NAMES) - set(present)):
        skipped[name] = "in the file, but the model has none"
    if not named:
        for key in sorted({k.split(".")[1] for k in state if k.startswith("objectives.")} - set(objectives)):
            skipped[f"objectives.{key}"] = "in the file, but the model has no such objective"
    log.info("init_from %s: loaded %s%s", path, ", ".join(loaded) or "no part",
             "; not loaded: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) if skipped else "")
    return loaded


def random_frozen_parts(model: nn.Module) -> list[str]:
    """Frozen parts (``freeze``, or built with ``frozen=True``) and frozen modules inside parts whose
    weights are still their random initialisation (no ``checkpoint``, ``pretrained_path`` or ``init_from``)."""
    found = []
    for name in part_names(model):
        if name in model.idle_parts:  # never run: its weights do not matter
            continue
        part = getattr(model, name)
        for m in part.values() if isinstance(part, nn.ModuleDict) else [part]:
            frozen = name in model.frozen_parts or bool(getattr(m, "frozen", False))
            if frozen and next(m.parameters(), None) is not None and getattr(m, "weights_source", None) is None:
                found.append(name)
                break
    for path in model.frozen_parts:  # modules inside parts (objectives.mvm.tagger)
        inside = "." in path and path.split(".")[0] not in found
        if inside and next(module_at(model, path, "freeze").parameters(), None) is not None and weights_source(model, path) is None:
            found.append(path)
    return found


def check_frozen_parts_have_weights(model: nn.Module) -> None:
    """:class:`ConfigError` if a frozen part would train with random weights (unless ``allow_random_frozen``)."""
    names = random_frozen_parts(model)
    if not names or model.allow_random_frozen:
        return
    first = module_at(model, names[0], "freeze")
    params = inspect.signature(type(first).__init__).parameters
    arg = next((a for a in ("checkpoint", "pretrained_path") if a in params), None)
    weights = "model_folder" if arg == "pretrained_path" else (
        "open_clip_pytorch_model.bin" if getattr(first, "registry_name", "") == "open_clip" else "weights.safetensors"
    )
    how = f"--model.{names[0]}.{arg} /path/to/{weights} or --model.init_from PATH" if arg else "--model.init_from PATH"
    if "pretrained" in params:  # timm, open_clip: a name read through the Hugging Face hub cache
        how += f", or a pretrained name: --model.{names[0]}.pretrained (docs/using-models.md)"
    raise ConfigError(
        f"frozen part(s) {', '.join(names)} still have their random initialisation: give them weights "
        f"({how}); --model.allow_random_frozen true trains anyway (timing runs, tests)"
    )


def idle_parts(model: nn.Module) -> tuple[str, ...]:
    """The parts ``model`` has but never runs (kept for what they hold, a text encoder's tokenizer;
    not trained): all of them when no objective runs the model's forward; the fusion when neither the
    head (``uses_fusion``) nor an objective (``reads_fused_tokens``) reads a fused value."""
    if not model.runs_forward:
        return tuple(n for n in PART_NAMES[:-1] if getattr(model, n, None) is not None)
    head_fuses = model.head is None or getattr(model.head, "uses_fusion", True)
    reads_fusion = any(getattr(o, "reads_fused_tokens", False) for o in model.objectives)
    return ("fusion",) if not head_fuses and not reads_fusion and model.fusion is not None else ()


def init_from(model: nn.Module, path: str | None, parts: Sequence[str] | None, rename: Mapping[str, str]) -> None:
    """The model's ``init_from`` / ``init_parts`` / ``init_rename`` arguments: checked, then
    :func:`load_parts` when a file is given."""
    if parts and not path:
        raise ConfigError(
            f"init_parts {list(parts)} is set but init_from is not: give the checkpoint to load "
            f"them from with --model.init_from PATH, or pass --model.init_parts null to train from scratch"
        )
    if rename and path and not parts:
        raise ConfigError(f"init_rename {dict(rename)} is set but init_parts is not: name the modules "
                          f"to load (--model.init_parts [{next(iter(rename))}])")
    if path:
        load_parts(model, path, parts, rename)


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of what ``torch.load(weights_only=True)`` reads: no classes, no functions."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def loadable_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters without an optimizer or scheduler given from Python as a class
    or function (``optimizer=torch.optim.AdamW``), which would make the file unreadable with
    ``torch.load(weights_only=True)``, the way it is read to resume or test; LightningCLI records
    ``{class_path, init_args}`` instead, which is kept."""
    return {k: v for k, v in hparams.items() if k not in ("optimizer", "scheduler") or _plain(v)}
