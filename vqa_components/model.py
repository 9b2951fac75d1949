"""The generic LightningModule that assembles a VideoQA model from parts.

Each part is a constructor argument, so a LightningCLI recipe names it (by
registry name or ``class_path``) and any mix of compatible parts trains::

    model = VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=128),
        text_encoder=create("text_encoder", "small_transformer", dim=128),
        fusion=create("fusion", "cross_attention", video_dim=128, text_dim=128, dim=128),
        head=create("head", "answer_classifier", in_dim=128, num_answers=16),
        objectives=[create("objective", "answer_cross_entropy")],
    )

Multi-stage training (E-ViLM trains its tokenizer first): ``init_from`` loads
the weights of parts from an earlier checkpoint (or a plain state dict): those
named in ``init_parts``, or by default every part whose weights the file holds
and fit. ``freeze`` lists parts whose weights stay fixed; a frozen part must have
weights (its own ``checkpoint``, or ``init_from``) before ``fit`` trains with it.
Both take dotted paths to modules inside parts (``objectives.mvm.tagger``), and
``init_rename`` loads a module from another path of the file
(``{"objectives.mvm.tagger": "objectives.svq.tokenizer.tagger"}``: stage 2's tagger from
stage 1's tokenizer). Objectives are kept by name (``objectives.svq``), so a stage
with other objectives still finds an earlier stage's.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import Tensor, nn
from torchmetrics import Metric

from vqa_components.backbones.open_clip import load_strict, read_state_dict, state_mismatch
from vqa_components.data.bad_input import (
    LONG_QUESTION_POLICIES,
    SkipReport,
    SkipSummary,
    question_token_counter,
    screen_long_questions,
    startup_skips,
)
from vqa_components.data.feature_cache import FeatureCache
from vqa_components.interfaces import (
    Backbone,
    ConfigError,
    Fusion,
    FusionOutput,
    Head,
    ModelOutput,
    Objective,
    Sampler,
    SamplerOutput,
    TextEncoder,
    TextFeatures,
    VideoFeatures,
)
from vqa_components.metrics import answer_metric
from vqa_components.optim import optimizer_for_precision

log = logging.getLogger(__name__)

PART_NAMES = ("backbone", "text_encoder", "sampler", "fusion", "head", "objectives")
#: the parts the model's own forward runs (an objective with ``runs_model_forward`` needs them)
FORWARD_PARTS = ("backbone", "text_encoder", "fusion", "head")


class ObjectiveDict(nn.ModuleDict):
    """The model's objectives, keyed by name (their registry name; ``vtm_2`` for a second ``vtm``),
    so that their weights sit at ``objectives.<name>.*`` in checkpoints whatever the list's order.
    Iterating gives the objectives in recipe order, like a list, and ``objectives[0]`` is the first.
    """

    def __iter__(self):  # type: ignore[override]
        return iter(self.values())

    def __getitem__(self, key: int | str) -> nn.Module:  # type: ignore[override]
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def objective_key(obj: nn.Module, taken: Sequence[str]) -> str:
    """The name an objective is kept under: its registry name (else its class name, lower case),
    with ``_2``, ``_3``, ... for a second, third objective of the same name."""
    base = getattr(obj, "registry_name", "") or type(obj).__name__.lower()
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


class VideoQAModel(pl.LightningModule):
    """A VideoQA model assembled from parts.

    Args:
        backbone: video -> per-frame features.
        text_encoder: question (or caption) strings -> token features.
        fusion: joins video and text features.
        head: fused features -> answer scores.
        objectives: training losses, summed with their ``weight``. When none of them runs the
            model's forward (``Objective.runs_model_forward``; a first stage that trains its own
            encoder), ``backbone``, ``fusion`` and ``head`` may be ``None`` and the parts that are
            given anyway (a text encoder kept for its tokenizer) are not trained.
        sampler: optional frame selection between backbone and fusion.
        optimizer: a callable ``params -> Optimizer`` (LightningCLI:
            ``optimizer: {class_path: torch.optim.AdamW, init_args: {lr: ...}}``).
        scheduler: optional callable ``optimizer -> LRScheduler`` stepped per
            optimizer step.
        text_field: the batch key the text encoder reads (``question`` for QA,
            ``caption`` for caption pretraining).
        freeze: parts (``backbone``, ``text_encoder``, ...) or dotted paths to modules inside
            them (``objectives.mvm.tagger``) whose weights stay fixed; a frozen module also runs
            in eval mode, whatever ``train()`` is called on.
        init_from: a checkpoint (``.ckpt``), state-dict or ``.safetensors`` file to
            load weights from (read with ``weights_only=True``).
        init_parts: the parts to load from ``init_from``; each must be in the file
            and fit exactly. Default: every part that the model and the file both
            have and whose weights fit (the rest keep their weights; which parts
            were loaded and why others were not is logged at INFO). Setting it
            without ``init_from`` is an error (``init_parts: null`` trains from
            scratch). Used to chain training stages. Dotted paths name modules inside parts
            (``objectives.mvm.tagger``, ``fusion.blocks``).
        init_rename: ``{path in the model: path in the file}`` for modules of ``init_parts`` that
            the file holds under another name (stage 2's tagger from stage 1's tokenizer:
            ``{"objectives.mvm.tagger": "objectives.svq.tokenizer.tagger"}``); ignored when nothing
            is loaded (``init_from`` not given).
        allow_random_frozen: train even if a frozen part (in ``freeze``, or built
            with ``frozen=True``) still has its random initialisation, i.e. neither
            its own loading code (``checkpoint``, ``pretrained_path``) nor
            ``init_from`` gave it weights. For timing runs and tests; otherwise
            ``fit`` stops with an error. Checked when ``fit`` starts without a
            ``ckpt_path`` (resuming, validating, testing and predicting take the
            weights from the checkpoint).
        feature_cache: folder of an on-disk cache of the backbone's features
            (:class:`~vqa_components.data.feature_cache.FeatureCache`); the
            backbone must be frozen and ``cacheable``. Give the dataset the same
            folder (``feature_cache``) so that later epochs skip decoding too
            (``docs/parts/feature_cache.md``).
        feature_cache_dtype: storage precision of the cache, ``"float32"``
            (exact) or ``"float16"`` (half the disk).
        on_long_question: what training and evaluation do with a question (or question+option
            pair) longer than the text encoder's token limit, which the encoder would truncate:
            ``"skip"`` leaves the sample out and counts it (``question_too_long`` in the epoch's
            report), ``"raise"`` stops naming the record (strict mode), ``"truncate"`` lets the
            encoder cut it. Prediction always truncates (every sample gets an answer). Encoders
            whose tokenizer is not CLIP's BPE or a Hugging Face tokenizer are not checked.
    """

    def __init__(
        self,
        backbone: Backbone | None = None,
        text_encoder: TextEncoder | None = None,
        fusion: Fusion | None = None,
        head: Head | None = None,
        objectives: Sequence[Objective] = (),
        sampler: Sampler | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        text_field: str = "question",
        freeze: Sequence[str] = (),
        init_from: str | None = None,
        init_parts: Sequence[str] | None = None,
        init_rename: dict[str, str] | None = None,
        feature_cache: str | None = None,
        feature_cache_dtype: str = "float32",
        allow_random_frozen: bool = False,
        on_long_question: str = "skip",
    ) -> None:
        super().__init__()
        if on_long_question not in LONG_QUESTION_POLICIES:
            raise ConfigError(f"on_long_question must be one of {', '.join(LONG_QUESTION_POLICIES)}, got {on_long_question!r}")
        self.on_long_question = on_long_question
        self.save_hyperparameters(ignore=["backbone", "text_encoder", "fusion", "head", "objectives", "sampler"])
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.sampler = sampler
        self.fusion = fusion
        self.head = head
        self.objectives = ObjectiveDict()
        for obj in objectives:
            self.objectives[objective_key(obj, list(self.objectives.keys()))] = obj
        if not len(self.objectives):
            raise ValueError("VideoQAModel needs at least one objective (e.g. answer_cross_entropy)")
        self.runs_forward = any(getattr(obj, "runs_model_forward", True) for obj in self.objectives)
        head_fuses = head is None or getattr(head, "uses_fusion", True)
        if self.runs_forward:
            needed = [name for name in FORWARD_PARTS if head_fuses or name != "fusion"]
            missing = [name for name in needed if getattr(self, name) is None]
            if missing:
                users = [k for k, o in self.objectives.items() if getattr(o, "runs_model_forward", True)]
                raise ConfigError(
                    f"the model has no {', '.join(missing)}, but objective(s) {', '.join(users)} run the model's "
                    f"forward, which needs {', '.join(FORWARD_PARTS)}: give them in the recipe (model.{missing[0]})"
                )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.text_field = text_field
        self.allow_random_frozen = allow_random_frozen
        for obj in self.objectives:  # before freezing and loading: what it builds is frozen and loaded too
            obj.attach(self)
        self.frozen_parts = tuple(freeze)
        for name in self.frozen_parts:
            self._module(name, "freeze").requires_grad_(False)
        #: parts given but never run (no objective runs the model's forward): kept for what they
        #: hold (a text encoder's tokenizer), not trained
        self.idle_parts = () if self.runs_forward else tuple(
            name for name in ("backbone", "text_encoder", "sampler", "fusion", "head") if getattr(self, name) is not None
        )
        reads_fusion = any(getattr(o, "reads_fused_tokens", False) for o in self.objectives)
        if self.runs_forward and not head_fuses and not reads_fusion and self.fusion is not None:
            self.idle_parts = ("fusion",)  # neither the head nor an objective reads a fused value
        for name in self.idle_parts:
            getattr(self, name).requires_grad_(False)
        if init_parts and not init_from:
            raise ConfigError(
                f"init_parts {list(init_parts)} is set but init_from is not: give the checkpoint to load "
                f"them from with --model.init_from PATH, or pass --model.init_parts null to train from scratch"
            )
        if init_rename and init_from and not init_parts:
            raise ConfigError(
                f"init_rename {dict(init_rename)} is set but init_parts is not: name the modules to load "
                f"(--model.init_parts [{next(iter(init_rename))}])"
            )
        self.init_rename = dict(init_rename or {})
        if init_from:
            self.load_parts(init_from, init_parts, self.init_rename)
        self.feature_cache: FeatureCache | None = None
        if feature_cache:  # after init_from: the fingerprint covers the final weights
            self.feature_cache = FeatureCache(feature_cache, self.backbone, dtype=feature_cache_dtype)  # type: ignore[arg-type]
        self.answer_vocab: list[str] = []
        self.families: list[str] = []
        self.breakdowns: dict[str, list[str]] = {}
        self._metrics: dict[str, Metric | None] = {}
        self._skips: dict[str, SkipReport] = {}
        #: the last report of each stage (``train``, ``val``, ``test``): what it left out, over every rank
        self.skip_summaries: dict[str, SkipSummary] = {}
        self._unchecked_questions_logged = False
        # a new module is in training mode, but transformers builds its models in eval mode, and
        # Lightning keeps each module's mode at fit start: without this, their dropout would be off
        self.train()

    # ------------------------------------------------------------- assembly
    def _part(self, name: str) -> nn.Module | None:
        if name not in PART_NAMES:
            return None
        return getattr(self, name)

    def _module(self, path: str, what: str) -> nn.Module:
        """The part or the module inside a part at the dotted ``path``; :class:`ConfigError` naming
        ``what`` (the argument) and what exists there otherwise."""
        top, _, rest = path.partition(".")
        part = self._part(top)
        if part is None:
            raise ConfigError(f"{what}: model has no part {top!r}; parts: {', '.join(self._present_parts())}")
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

    def load_parts(
        self, path: str, parts: Sequence[str] | None = None, rename: dict[str, str] | None = None
    ) -> list[str]:
        """Load part weights from a Lightning checkpoint or a state dict; returns the parts loaded.

        ``parts`` named (parts or dotted paths to modules inside them): each must be in the file
        (under ``rename[path]`` if given) and fit exactly (else :class:`ConfigError`).
        ``parts`` empty or ``None``: every part (and every objective, by name) that both the model
        and the file have and whose weights fit; the others keep their weights, and why is logged.
        """
        if not Path(path).exists():
            raise ConfigError(f"init_from: no such checkpoint file: {path}")
        state = read_state_dict(path)
        positions = {k.split(".")[1] for k in state if k.startswith("objectives.") and k.split(".")[1].isdigit()}
        if positions and max(int(i) for i in positions) < len(self.objectives):
            # a file written before objectives were kept by name: taken to be of the same recipe, in its order
            names = list(self.objectives.keys())
            log.info("init_from %s: objectives by position, read as %s", path,
                     ", ".join(f"objectives.{i} -> objectives.{names[int(i)]}" for i in sorted(positions)))
            state = migrate_objective_keys(state, names)
        rename = dict(rename or {})
        in_file = {k.split(".", 1)[0] for k in state}
        named = list(parts or [])
        for name in rename:
            if name not in named:
                raise ConfigError(f"init_rename: {name!r} is not in init_parts {named}")
        modules = {name: self._module(name, "init_parts") for name in named}
        loaded: list[str] = []
        skipped: dict[str, str] = {}
        for name in named or self._default_load_paths():
            part = modules[name] if named else self._module(name, "init_parts")
            source = rename.get(name, name)
            sub = {k[len(source) + 1 :]: v for k, v in state.items() if k.startswith(source + ".")}
            has_weights = bool(part.state_dict())
            if named:
                if not sub and has_weights:
                    near = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith(source.split(".")[0] + ".")})
                    hint = f"; under {source.split('.')[0]!r} it has: {_preview_paths(near, source)}" if near else ""
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
            _set_weights_source(part, f"{path} (init_from)")
            loaded.append(name if source == name else f"{name} (from {source})")
        for name in sorted(in_file & set(PART_NAMES) - set(self._present_parts())):
            skipped[name] = "in the file, but the model has none"
        if not named:
            for key in sorted({k.split(".")[1] for k in state if k.startswith("objectives.")} - set(self.objectives.keys())):
                skipped[f"objectives.{key}"] = "in the file, but the model has no such objective"
        log.info(
            "init_from %s: loaded %s%s",
            path,
            ", ".join(loaded) or "no part",
            "; not loaded: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) if skipped else "",
        )
        return loaded

    def _present_parts(self) -> list[str]:
        return [name for name in PART_NAMES if self._part(name) is not None]

    def _default_load_paths(self) -> list[str]:
        """What ``init_from`` without ``init_parts`` tries: every part, and each objective by name."""
        paths = [name for name in self._present_parts() if name != "objectives"]
        return paths + [f"objectives.{key}" for key in self.objectives.keys()]

    def random_frozen_parts(self) -> list[str]:
        """Frozen parts (``freeze``, or built with ``frozen=True``) whose weights are still random."""
        found = []
        for name in self._present_parts():
            if name in self.idle_parts:  # never run: its weights do not matter
                continue
            part = self._part(name)
            modules = list(part) if isinstance(part, nn.ModuleDict) else [part]
            for m in modules:
                frozen = name in self.frozen_parts or bool(getattr(m, "frozen", False))
                has_params = next(m.parameters(), None) is not None
                if frozen and has_params and getattr(m, "weights_source", None) is None:
                    found.append(name)
                    break
        for path in self.frozen_parts:  # modules inside parts (objectives.mvm.tagger)
            if "." in path and path.split(".")[0] not in found:
                m = self._module(path, "freeze")
                if next(m.parameters(), None) is not None and _weights_source_of(m, self, path) is None:
                    found.append(path)
        return found

    def check_frozen_parts_have_weights(self) -> None:
        """Raise :class:`ConfigError` if a frozen part would train with random weights (unless allowed)."""
        names = self.random_frozen_parts()
        if not names or self.allow_random_frozen:
            return
        first = self._module(names[0], "freeze")
        params = inspect.signature(type(first).__init__).parameters
        arg = next((a for a in ("checkpoint", "pretrained_path") if a in params), None)
        weights = "model_folder" if arg == "pretrained_path" else (
            "open_clip_pytorch_model.bin" if getattr(first, "registry_name", "") == "open_clip" else "weights.safetensors"
        )
        how = (
            f"--model.{names[0]}.{arg} /path/to/{weights} or --model.init_from PATH"
            if arg
            else "--model.init_from PATH"
        )
        raise ConfigError(
            f"frozen part(s) {', '.join(names)} still have their random initialisation: give them weights "
            f"({how}); --model.allow_random_frozen true trains anyway (timing runs, tests)"
        )

    def train(self, mode: bool = True) -> VideoQAModel:
        super().train(mode)
        for name in (*self.frozen_parts, *self.idle_parts):
            self._module(name, "freeze").eval()
        return self

    # -------------------------------------------------------------- forward
    def encode_text(self, texts: Sequence[str]) -> TextFeatures:
        return self.text_encoder.encode(list(texts))

    def encode_video(
        self, video: Tensor | tuple[Tensor, ...], batch: dict[str, Any] | None = None, use_cache: bool = True
    ) -> VideoFeatures:
        """Backbone features of ``video`` (``uint8`` pixels are scaled to ``[0, 1]`` floats first).

        With a feature cache, the features of the batch's clips come from the cache (keyed by
        ``batch["video_key"]``); ``use_cache=False`` runs the backbone on ``video`` as given,
        which a forward on changed pixels (masked video modelling) must do.
        """
        video = pixels_to_float(video)
        if self.feature_cache is not None and use_cache:
            keys = batch.get("video_key") if batch is not None else None
            if keys is not None or isinstance(video, list):
                return self.feature_cache.encode(video, keys, device=self.device)
        if "backbone" in self.frozen_parts:
            with torch.no_grad():
                return self.backbone(video)
        return self.backbone(video)

    def fuse(self, video: VideoFeatures, text: TextFeatures) -> tuple[SamplerOutput | None, FusionOutput]:
        """Sampler and fusion. The fusion's output carries the video features it was given
        (``extras["video_features"]``) for heads that read the unimodal features."""
        sampled = self.sampler(video, text) if self.sampler is not None else None
        given = sampled.video if sampled is not None else video
        fused = self.fusion(given, text)
        fused.extras.setdefault("video_features", given)
        return sampled, fused

    def forward_features(
        self, video: VideoFeatures, text: TextFeatures, targets: Sequence[str] | None = None
    ) -> ModelOutput:
        """Sampler, fusion and head on encoded inputs; ``targets`` go to a head that trains on text.

        A head with ``uses_fusion = False`` (retrieval from the unimodal encoders) reads only the video
        features: the fusion is not run on this path (objectives that need the fusion's tokens call
        :meth:`fuse`, which always runs it)."""
        if self.head is not None and not getattr(self.head, "uses_fusion", True):
            sampled = self.sampler(video, text) if self.sampler is not None else None
            given = sampled.video if sampled is not None else video
            fused = FusionOutput(pooled=given.cls.mean(1), tokens=given.flat_tokens(),
                                 extras={"video_features": given})
        else:
            sampled, fused = self.fuse(video, text)
        # a head written before heads took targets keeps working: they are passed only when there are some
        head = self.head(fused, text) if targets is None else self.head(fused, text, targets=list(targets))
        return ModelOutput(video=video, text=text, fused=fused, head=head, sampled=sampled)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        if not self.runs_forward:
            raise ConfigError(
                f"this model has no forward of its own: its objectives ({', '.join(self.objectives.keys())}) "
                f"compute everything themselves; it trains and validates, but cannot answer questions"
            )
        video = self.encode_video(batch["video"], batch)
        if self.head.task == "multiple_choice" and "options" in batch:
            return self._forward_multiple_choice(video, batch)
        return self.forward_features(video, self.encode_text(batch[self.text_field]), self.targets(batch))

    def targets(self, batch: dict[str, Any]) -> list[str] | None:
        """The answer strings a generating head trains on (teacher forcing), if the batch has them."""
        if self.head is None or self.head.task != "generate" or "answer" not in batch:
            return None
        return list(batch["answer"])

    def _forward_multiple_choice(self, video: VideoFeatures, batch: dict[str, Any]) -> ModelOutput:
        """Score each (question, option) pair; logits come back as ``(b, options)``."""
        options: list[list[str]] = batch["options"]
        n = len(options[0])
        if any(len(o) != n for o in options):
            raise ValueError("multiple choice: every question in a batch needs the same number of options")
        texts = [t for q, opts in zip(batch["question"], options) for t in _pair_texts(q, opts)]
        out = self.forward_features(video.repeat_interleave(n), self.encode_text(texts))
        out.head.logits = out.head.logits.reshape(len(options), n)
        return out

    # ------------------------------------------------------------- training
    def _loss(self, batch: dict[str, Any], out: ModelOutput | None, stage: str) -> Tensor:
        total = torch.zeros((), device=self.device)
        for name, obj in self.objectives.items():
            parts = obj(self, batch, out)
            total = total + obj.weight * parts["loss"]
            for k, v in parts.items():
                key = f"{stage}/{name}" if k == "loss" else f"{stage}/{name}_{k}"
                self.log(key, v.detach().float(), batch_size=_batch_size(batch), sync_dist=stage != "train")
        return total

    def _record_skips(self, batch: dict[str, Any], stage: str = "train") -> None:
        if batch.get("num_skipped"):
            self._skips.setdefault(stage, SkipReport()).add(batch.get("skipped", []))

    def _admit(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        """The batch without the samples left out: counts those the loader dropped and screens
        the questions against the text encoder's limit (``on_long_question``)."""
        self._record_skips(batch, stage)
        if self.on_long_question == "truncate" or self.text_field != "question" or _batch_size(batch) == 0:
            return batch
        if self.text_encoder is None or self.head is None:
            return batch
        counter = question_token_counter(self.text_encoder)  # looked up per batch: nothing unpicklable kept
        if counter is None or "question" not in batch:
            if counter is None and not self._unchecked_questions_logged:
                log.info("on_long_question: the text encoder's tokenizer is not one it knows; questions are not checked")
                self._unchecked_questions_logged = True
            return batch
        if self.head.task == "multiple_choice" and "options" in batch:
            texts = [_pair_texts(q, opts) for q, opts in zip(batch["question"], batch["options"])]
        else:
            texts = [[q] for q in batch["question"]]
        source = str(getattr(self._stage_dataset(stage), "annotation_file", "") or "")
        batch, skipped = screen_long_questions(batch, counter, texts, self.on_long_question, stage, source)
        if skipped:
            self._skips.setdefault(stage, SkipReport()).add(skipped)
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        batch = self._admit(batch, "train")
        if _batch_size(batch) == 0:
            return None
        out = self(batch) if self.runs_forward else None
        loss = self._loss(batch, out, "train")
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=_batch_size(batch))
        # generating every answer would cost more than the training step
        if out is not None and self.head.task != "generate" and self.head.has_ground_truth(batch):
            scores = self.head.score(self.head.answers(out), batch)
            self.log("train/acc", scores.mean(), prog_bar=True, batch_size=_batch_size(batch))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        batch = self._admit(batch, stage)
        if _batch_size(batch) == 0:
            return
        out = self(batch) if self.runs_forward else None
        loss = self._loss(batch, out, stage)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=_batch_size(batch), sync_dist=True)
        metric = self._metric(stage)
        if metric is not None and out is not None:  # the metric asks the head what it needs (answers and scores, or embeddings)
            metric.update_from(self.head, out, batch)  # type: ignore[attr-defined]

    def _metric(self, stage: str) -> Metric | None:
        """The head task's metric of ``stage`` (``metrics.TASK_METRICS``), made at first use."""
        if self.head is None:
            return None
        if stage not in self._metrics:  # the groups are known at setup, so every rank has the same states
            metric = answer_metric(self.head.task, self.families, self.breakdowns, self.answer_vocab)
            self._metrics[stage] = None if metric is None else metric.to(self.device)
        return self._metrics[stage]

    def _log_accuracy(self, stage: str) -> None:
        metric = self._metrics.pop(stage, None)
        if metric is not None:
            # compute() sums the counts over all ranks (every rank calls it, once, also a rank that
            # saw no answer), so the values are already global: logging them needs no second reduction
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*before the ``update``")
                values = metric.compute()
            if values["num_samples"] > 0:  # no ground truth anywhere (e.g. caption pretraining): no accuracy
                for key, value in values.items():
                    self.log(f"{stage}/{key}", value.float(), prog_bar=key == "acc", sync_dist=False)
        self._report_skips(stage)

    def _report_skips(self, stage: str) -> None:
        """The end-of-epoch report of what ``stage`` left out: counts per cause and the first ids,
        over every rank and with the records its dataset left out at start-up (every rank calls
        this: the merge is a collective). Logged as ``<stage>/skipped_videos`` (always) and
        ``<stage>/skipped_<cause>`` (causes that occurred); kept in :attr:`skip_summaries`."""
        summary = self._skips.pop(stage, SkipReport()).reduce(startup_skips(self._stage_dataset(stage)))
        self.skip_summaries[stage] = summary
        if summary.total and self.global_rank == 0:
            log.warning("%s", summary.format(stage))
        # the values are global already: no second reduction
        self.log(f"{stage}/skipped_videos", float(summary.videos), sync_dist=False)
        for cause, n in summary.counts.items():
            self.log(f"{stage}/skipped_{cause}", float(n), sync_dist=False)

    def _stage_dataset(self, stage: str) -> Any:
        """The dataset the trainer's loader of ``stage`` reads (``None`` without a trainer)."""
        if self._trainer is None:
            return None
        loaders = {
            "train": lambda: self.trainer.train_dataloader,
            "val": lambda: self.trainer.val_dataloaders,
            "test": lambda: self.trainer.test_dataloaders,
        }.get(stage, lambda: None)()
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        return getattr(loaders, "dataset", None)

    def on_train_epoch_end(self) -> None:
        self._report_skips("train")

    def on_fit_start(self) -> None:
        if not self.trainer.strategy.restore_checkpoint_after_setup:  # a resumed run's weights are loaded by now
            self._check_weights_before_training()

    def on_train_start(self) -> None:
        if self.trainer.strategy.restore_checkpoint_after_setup:  # these strategies load the checkpoint later
            self._check_weights_before_training()

    def _check_weights_before_training(self) -> None:
        if self.trainer.ckpt_path is None:  # resuming: the weights come from the checkpoint
            self.check_frozen_parts_have_weights()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        out = self(batch)
        answers = self.head.answers(out)
        if isinstance(answers, list):  # generated text
            preds = answers
        else:
            idx = answers.tolist()
            if self.head.task == "multiple_choice":
                preds = [opts[i] for opts, i in zip(batch["options"], idx)]
            else:
                preds = [self.answer_vocab[i] if i < len(self.answer_vocab) else str(i) for i in idx]
        video_ids = batch.get("video_id") or [None] * len(preds)
        return [
            {"video_id": v, "question": q, "prediction": p}
            for v, q, p in zip(video_ids, batch["question"], preds, strict=True)
        ]

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        vocab = list(getattr(dm, "answer_vocab", []) or [])
        if vocab:
            self.answer_vocab = vocab
            n = getattr(self.head, "num_answers", None)
            if self.head is not None and self.head.task == "classify" and n is not None and n != len(vocab):
                raise ValueError(
                    f"head.num_answers={n} but the dataset has {len(vocab)} answers; "
                    f"set model.head.init_args.num_answers: {len(vocab)} in the recipe"
                )
        self.families = list(getattr(dm, "families", []) or [])
        self.breakdowns = {str(k): list(v) for k, v in (getattr(dm, "breakdowns", None) or {}).items()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["answer_vocab"] = self.answer_vocab
        checkpoint["families"] = self.families
        checkpoint["breakdowns"] = self.breakdowns
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict):
            # a class or function given from Python (optimizer=torch.optim.AdamW) would make the file
            # unreadable with torch.load(weights_only=True), the way it is loaded to resume or test;
            # LightningCLI records {class_path, init_args} instead, which is kept
            checkpoint["hyper_parameters"] = {
                k: v for k, v in hparams.items() if k not in ("optimizer", "scheduler") or _plain(v)
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if isinstance(checkpoint.get("state_dict"), dict):  # runs before Lightning loads the weights
            checkpoint["state_dict"] = migrate_objective_keys(checkpoint["state_dict"], list(self.objectives.keys()))
        self.answer_vocab = checkpoint.get("answer_vocab", [])
        self.families = checkpoint.get("families", [])
        self.breakdowns = checkpoint.get("breakdowns", {})

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self._trainer is not None:
            optimizer = optimizer_for_precision(optimizer, str(self.trainer.precision), self.trainer.gradient_clip_val)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip as Lightning does, also for a fused optimizer under ``bf16-mixed``.

        Lightning's mixed-precision plugin refuses to clip for any optimizer that could unscale
        gradients inside its step, but only ``16-mixed`` has a scaler: under ``bf16-mixed`` the
        gradients are the true ones and the ordinary clipping is exact.
        """
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and getattr(plugin, "scaler", True) is None:
            algorithm = gradient_clip_algorithm or GradClipAlgorithmType.NORM
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def _why_not_loaded(part: nn.Module, sub: dict[str, Tensor]) -> str | None:
    """Why the default ``init_from`` leaves ``part`` as it is, given the file's weights ``sub`` for it."""
    if not part.state_dict():
        return "the model's part has no weights"
    if not sub:
        return "not in the file"
    mismatch = state_mismatch(part, sub)
    return f"does not fit: {mismatch}" if mismatch else None


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of what ``torch.load(weights_only=True)`` reads: no classes, no functions."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _set_weights_source(part: nn.Module, source: str) -> None:
    for module in part if isinstance(part, (nn.ModuleList, ObjectiveDict)) else [part]:
        module.weights_source = source


def _label(path: str) -> str:
    """``part 'backbone'`` or ``module 'objectives.mvm.tagger'``, for messages."""
    return f"module {path!r}" if "." in path else f"part {path!r}"


def _weights_source_of(module: nn.Module, model: VideoQAModel, path: str) -> str | None:
    """Where the weights of the module at ``path`` came from: its own ``weights_source``, or that of
    the nearest module above it that was loaded whole."""
    source = getattr(module, "weights_source", None)
    parts = path.split(".")
    while source is None and len(parts) > 1:
        parts.pop()
        source = getattr(model._module(".".join(parts), "freeze"), "weights_source", None)
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
        if int(index) < len(names):
            out[f"objectives.{names[int(index)]}.{rest}"] = state[k]
        else:
            out[k] = state[k]
    return out


def _preview_paths(paths: Sequence[str], near: str, n: int = 6) -> str:
    """Up to ``n`` of ``paths``, those sharing the longest prefix with ``near`` first."""
    def shared(p: str) -> int:
        return -len(os.path.commonprefix([p, near]))

    ranked = sorted(paths, key=lambda p: (shared(p), p))[:n]
    return ", ".join(ranked) + (", ..." if len(paths) > n else "")


def pixels_to_float(video: Any) -> Any:
    """``uint8`` pixels (what datasets emit: 4x less to copy between processes) to floats in ``[0, 1]``."""
    if isinstance(video, Tensor):
        return video.float().div_(255.0) if video.dtype == torch.uint8 else video
    if isinstance(video, tuple):
        return tuple(pixels_to_float(v) for v in video)
    return video


def _pair_texts(question: str, options: Sequence[str]) -> list[str]:
    """What the model encodes for each option of a multiple-choice question."""
    return [f"{question} {o}" for o in options]


def _batch_size(batch: dict[str, Any]) -> int:
    if "batch_size" in batch:
        return int(batch["batch_size"])
    video = batch["video"]
    if isinstance(video, (tuple, list)):
        video = video[0]
    return int(video.shape[0])
