"""Model folders: a trained model in one self-contained folder, and the model rebuilt from it.

``vqa export --config RECIPE --ckpt_path best --out DIR`` (:func:`export`) writes::

    DIR/config.yaml         the run's resolved model and data arguments, and ``video``: how a clip
                            is read for this model (frames and size per stream, resize and crop)
    DIR/model.safetensors   every weight of the model (a tied weight once)
    DIR/extra_state.json    the modules' extra state, if any (``get_extra_state``: the bert vocabulary)
    DIR/answer_vocab.json   the answers a classifying head's classes stand for
    DIR/files/...           what the parts read besides weights: tokenizer folders, vocabularies,
                            the ``config.json`` of a transformers model
    DIR/README.md           the model card: recipe, parts, parameters, GMACs, test metrics, dataset

:func:`load_model` rebuilds the :class:`~vqa_components.model.VideoQAModel`
(``VideoQAModel.from_pretrained``); :func:`load_pipeline` only the parts that answer, as a
:class:`~vqa_components.pipeline.VideoQAPipeline`, without importing Lightning (``vqa ask``, the
demo). Both build the parts inside :func:`~vqa_components.weights.weights_loaded_later` (pretrained
names are not looked up; a transformers model is built from the ``config.json`` the folder carries),
then load ``model.safetensors`` strictly. Loading never unpickles: YAML, JSON and safetensors only.
``DIR`` may also be a Hugging Face hub id (``ORG/NAME``), read through the hub cache
(``snapshot_download``; offline with ``HF_HUB_OFFLINE=1``).

Why not ``huggingface_hub.ModelHubMixin``: it builds ``config.json`` from the constructor's
JSON-able arguments and ``from_pretrained`` passes them back, but this model's constructor takes
parts (modules that jsonargparse builds from ``class_path`` YAML): the mixin would record a partial
config next to ``config.yaml``, and it hooks ``__new__`` of every model built, in training too.
The hub's own download and cache are used as the mixin uses them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from vqa_components import weights
from vqa_components.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, EXTRA_STATE_FILE, VOCAB_FILE, CARD_FILE, FILES_DIR = (
    "config.yaml", "model.safetensors", "extra_state.json", "answer_vocab.json", "README.md", "files"
)
FORMAT = "vqa-components model folder"
FORMAT_VERSION = 1

#: model arguments that name where weights came from: the folder's weights replace them all
_MODEL_WEIGHT_ARGS = ("init_from", "init_parts", "init_rename", "feature_cache")
#: part arguments that name weight files: ``model.safetensors`` holds those weights
_WEIGHT_FILE_ARGS = ("checkpoint",)
#: part arguments naming a transformers model folder or hub id: the folder carries its config and tokenizer
_MODEL_FOLDER_ARGS = ("pretrained_path",)
#: part arguments naming files a part reads besides weights: copied into the folder
_FILE_ARGS = ("tokenizer_path", "vocab_file")
#: values of those arguments that name something the library carries (not a file)
_BUILT_IN = ("clip_bpe",)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot", ".gguf")


# ------------------------------------------------------------------ export
def export(
    model: nn.Module,
    config: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    recipe: str | None = None,
    test_metrics: Mapping[str, Any] | None = None,
    profile: Any = None,
) -> Path:
    """Write ``model`` (its weights, answer vocabulary and what its parts read) as a model folder.

    Args:
        model: the trained :class:`~vqa_components.model.VideoQAModel`.
        config: the run's resolved configuration (``model`` and ``data`` sections, as LightningCLI
            writes them; ``vqa export`` passes the recipe's).
        out: the folder; an earlier export there is replaced, any other non-empty folder refused.
        recipe: the recipe's path, for the model card.
        test_metrics: the run's ``test_metrics.json``, for the model card.
        profile: a :class:`~vqa_components.profiler.ProfileReport` of the model, for the model card.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CONFIG_FILE).is_file())):
        raise ConfigError(f"--out {out}: exists and is not an earlier model folder (no {CONFIG_FILE}); "
                          f"choose an empty or new folder")
    if out.exists():
        for name in (CONFIG_FILE, WEIGHTS_FILE, EXTRA_STATE_FILE, VOCAB_FILE, CARD_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / FILES_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = copy.deepcopy(dict(config["model"]))
    files: list[str] = []
    for key in _MODEL_WEIGHT_ARGS:
        if key in model_cfg:
            model_cfg[key] = None
    _carry_files(model_cfg, "model", out, files)
    _check_self_contained(model_cfg, "model")
    data_cfg = copy.deepcopy(dict(config.get("data") or {}))
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "recipe": recipe,
        "video": video_preprocessing(data_cfg),
        "files": files,
        "cost": None if profile is None else {"params": int(profile.params), "gmacs_per_sample": float(profile.gmacs)},
        "model": model_cfg,
        "data": data_cfg,
    }
    (out / CONFIG_FILE).write_text(yaml.safe_dump(_plain(document), sort_keys=False), encoding="utf-8")
    save_weights(model, out)
    vocab = list(getattr(model, "answer_vocab", []) or [])
    if vocab:
        (out / VOCAB_FILE).write_text(json.dumps(vocab, indent=0) + "\n", encoding="utf-8")
    from vqa_components.model_card import model_card

    (out / CARD_FILE).write_text(model_card(document, model, test_metrics, profile), encoding="utf-8")
    return out


def _storage_key(tensor: Tensor) -> tuple[Any, ...] | None:
    """What two names of one tensor share (tied weights); ``None`` for an empty tensor."""
    if not tensor.numel():
        return None
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())


def save_weights(model: nn.Module, out: Path) -> None:
    """``model.safetensors`` (each tensor once: a tied weight is saved under its first name) and
    ``extra_state.json`` (the JSON values of the modules' ``get_extra_state``)."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    extra: dict[str, Any] = {}
    seen: set[tuple[Any, ...]] = set()
    for name, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            extra[name] = value
            continue
        key = _storage_key(value)
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        tensors[name] = value.detach().cpu().contiguous()
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "written_by": FORMAT})
    if extra:
        try:
            text = json.dumps(extra, indent=1)
        except TypeError as exc:
            raise ConfigError(f"vqa export: the extra state of {', '.join(extra)} is not JSON ({exc}); a part that "
                              f"keeps state outside its tensors must keep plain values there") from None
        (out / EXTRA_STATE_FILE).write_text(text + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    """YAML-safe: paths as strings, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _nodes(cfg: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every part's ``init_args`` mapping in ``cfg`` (parts inside parts too), with its dotted path."""
    if isinstance(cfg, dict):
        if "class_path" in cfg and isinstance(cfg.get("init_args"), dict):
            yield path, cfg["init_args"]
        for key, value in cfg.items():
            yield from _nodes(value, f"{path}.{key}")
    elif isinstance(cfg, list):
        for i, value in enumerate(cfg):
            yield from _nodes(value, f"{path}.{i}")


def _carry_files(model_cfg: dict[str, Any], root: str, out: Path, files: list[str]) -> None:
    """Rewrite the parts' arguments so that the folder holds all they read (module docstring)."""
    for path, args in _nodes(model_cfg, root):
        for key in _WEIGHT_FILE_ARGS:
            if args.get(key) is not None:
                args[key] = None
        for key in _MODEL_FOLDER_ARGS:
            if args.get(key) is not None:
                target = _slot(out, path, key)
                source = _local_copy(str(args[key]), f"{path}.{key}")
                _copy_folder(source, target, skip_weights=True)  # config.json, and the tokenizer if it is there
                args[key] = str(target.relative_to(out))
                files.append(f"{path}.init_args.{key}")
        for key in _FILE_ARGS:
            value = args.get(key)
            if value is None or value in _BUILT_IN:
                continue
            target = _slot(out, path, key)
            source = _local_copy(str(value), f"{path}.{key}")
            if source.is_dir():
                _copy_folder(source, target, skip_weights=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                target = target / source.name
                shutil.copy2(source, target)
            args[key] = str(target.relative_to(out))
            files.append(f"{path}.init_args.{key}")


def _slot(out: Path, path: str, key: str) -> Path:
    """The folder under ``files/`` for the argument ``key`` of the part at ``path``."""
    name = path.removeprefix("model.").replace(".init_args", "").replace(".", "-")
    return out / FILES_DIR / f"{name}-{key}"


def _local_copy(value: str, where: str) -> Path:
    """A local file or folder named by ``value``, or the hub cache's snapshot of a hub id."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if weights.is_hub_id(value):
        from huggingface_hub import snapshot_download

        return Path(weights.from_hub(lambda: snapshot_download(value), "vqa export", where, value))
    raise ConfigError(f"vqa export: {where} {value!r} is neither a local file or folder nor a hub id")


def _copy_folder(source: Path, target: Path, skip_weights: bool) -> None:
    """The top-level files of ``source`` (not its weight files: ``model.safetensors`` has them)."""
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        if f.is_file() and not (skip_weights and f.name.endswith(_WEIGHT_SUFFIXES)):
            shutil.copy2(f.resolve(), target / f.name)


def _check_self_contained(model_cfg: dict[str, Any], root: str) -> None:
    """Refuse a part argument that still names a local file or folder the model folder does not carry."""
    for path, args in _nodes(model_cfg, root):
        for key, value in args.items():
            named = isinstance(value, str) and ("/" in value or "." in value) and not value.startswith(FILES_DIR)
            if named and Path(value).expanduser().exists():
                raise ConfigError(
                    f"vqa export: {path}.{key} names the file {value!r}, which the model folder would not "
                    f"carry; only {', '.join(_FILE_ARGS + _MODEL_FOLDER_ARGS)} are copied"
                )


def video_preprocessing(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """How the evaluation reads a clip for this model (the dataset's frame options; module docstring of
    :mod:`vqa_components.data.dataset`): ``streams`` ``[[num_frames, size], ...]``, ``multi_stream``,
    ``resize_short`` and ``crop_size`` (centred). Frames are evenly spaced over the clip."""
    import inspect

    from vqa_components.data.dataset import VideoQADataset, normalize_streams
    from vqa_components.registry import DATASETS

    args = dict(data_cfg.get("dataset_args") or {})
    defaults = {k: p.default for k, p in inspect.signature(VideoQADataset.__init__).parameters.items()}
    name = data_cfg.get("dataset")
    if name:
        params = inspect.signature(DATASETS.get(name)).parameters
        defaults.update({k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty})
    value = {**defaults, **args}
    streams = normalize_streams(value["num_frames"], value["frame_size"], value["streams"])
    return {
        "streams": [[int(t), s if s is None or isinstance(s, int) else list(s)] for t, s in streams],
        "multi_stream": value["streams"] is not None,
        "resize_short": value["resize_short"],
        "crop_size": value["crop_size"],
    }


# ------------------------------------------------------------------ load
def resolve(name: str | os.PathLike) -> Path:
    """The model folder ``name``: a local folder, or a hub id's snapshot in the hub cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
        if missing:
            raise ConfigError(f"{path} is not a model folder (no {' and no '.join(missing)}); `vqa export` writes one")
        return path
    if path.exists():
        raise ConfigError(f"{path} is a file; a model folder is the folder `vqa export` wrote")
    if weights.is_hub_id(str(name)):
        from huggingface_hub import snapshot_download

        # the whole repository (`hf download ORG/NAME`): the folder is more than its config and weights
        snapshot = weights.from_hub(lambda: snapshot_download(str(name)), "model folder", "hub id", str(name))
        return resolve(snapshot)  # a repository that is not a model folder is named as such
    raise ConfigError(f"model folder {str(name)!r}: no such folder, nor a Hugging Face hub id (ORG/NAME)")


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.yaml`` of a model folder, with the files it carries as absolute paths."""
    folder = resolve(folder)
    path = folder / CONFIG_FILE
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a {FORMAT} (no 'format: {FORMAT}')")
    if int(document.get("format_version", 0)) > FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version {document['format_version']} is newer than this "
                          f"vqa-components reads ({FORMAT_VERSION}): upgrade vqa-components")
    for dotted in document.get("files") or []:
        holder, key = _at(document, dotted, path)
        holder[key] = str(folder / holder[key])
    document["folder"] = str(folder)
    return document


def _at(document: dict[str, Any], dotted: str, path: Path) -> tuple[Any, Any]:
    """The container and key of the value at ``dotted`` (``model.text_encoder.init_args.tokenizer_path``)."""
    node: Any = document
    keys = dotted.split(".")
    try:
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last: Any = int(keys[-1]) if isinstance(node, list) else keys[-1]
        node[last]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ConfigError(f"{path}: files names {dotted!r}, which the config does not have") from None
    return node, last


def answer_vocab(folder: str | os.PathLike) -> list[str]:
    path = resolve(folder) / VOCAB_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def load_pipeline(name: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """The parts of a model folder that answer, as a :class:`~vqa_components.pipeline.VideoQAPipeline`
    in eval mode (no objectives, no Lightning)."""
    import inspect

    from jsonargparse import ArgumentParser

    from vqa_components.pipeline import VideoQAPipeline

    document = read_config(name)
    folder = Path(document["folder"])
    accepted = set(inspect.signature(VideoQAPipeline.__init__).parameters) - {"self", "answer_vocab"}
    model_cfg = {k: v for k, v in document["model"].items() if k in accepted}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VideoQAPipeline, "pipeline", skip={"answer_vocab"})
    with weights.weights_loaded_later():
        cfg = parser.parse_object({"pipeline": model_cfg})
        pipeline = parser.instantiate_classes(cfg).pipeline
    pipeline.answer_vocab = answer_vocab(folder)
    _load_weights(pipeline, folder, only_forward_parts=True)
    return pipeline.to(device).eval()


def load_model(name: str | os.PathLike, model_class: type) -> Any:
    """The model (``model_class``: :class:`~vqa_components.model.VideoQAModel` or a subclass; its
    ``from_pretrained`` passes itself) of a model folder, objectives included (it can train on), in
    training mode as a new model is; ``answer_vocab`` set."""
    from lightning.pytorch.cli import LightningArgumentParser

    document = read_config(name)
    folder = Path(document["folder"])
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(model_class, "model", subclass_mode=False)
    with weights.weights_loaded_later():
        cfg = parser.parse_object({"model": document["model"]})
        model = parser.instantiate_classes(cfg).model
    model.answer_vocab = answer_vocab(folder)
    _load_weights(model, folder, only_forward_parts=False)
    return model


def _load_weights(module: nn.Module, folder: Path, only_forward_parts: bool) -> None:
    """``model.safetensors`` (and ``extra_state.json``) into ``module``: every key must fit; a name
    missing from the file must be tied to one that is there; a pipeline leaves the objectives' out."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    state: dict[str, Any] = dict(load_file(str(path)))
    extra_file = folder / EXTRA_STATE_FILE
    if extra_file.is_file():
        state.update(json.loads(extra_file.read_text(encoding="utf-8")))
    if only_forward_parts:
        state = {k: v for k, v in state.items() if not k.startswith("objectives.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    own = module.state_dict()
    loaded = {_storage_key(own[k]) for k in state if k in own and isinstance(own[k], Tensor)}
    missing = [k for k in missing if not (isinstance(own[k], Tensor) and _storage_key(own[k]) in loaded)]
    if missing or unexpected:
        show = "; ".join(f"{what}: {', '.join(sorted(keys)[:5])}{' ...' if len(keys) > 5 else ''}"
                         for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        raise ConfigError(f"{path}: the weights do not fit the model its {CONFIG_FILE} builds ({show})")
    source = f"model folder {folder}"
    for part in weights.PART_NAMES:
        if getattr(module, part, None) is not None:
            weights.set_weights_source(getattr(module, part), source)
