"""The LightningModule that assembles a VideoQA model from parts, in the order the data flows::

    batch ─> encode_video (backbone) ───┐
          └> encode_text (text_encoder) ┴> fuse (sampler, fusion) ─> head ─> ModelOutput ─> objectives

Each part is a constructor argument, so a LightningCLI recipe names it (by registry name or
``class_path``) and any mix of compatible parts trains (``docs/concepts.md``).

What is not the data flow lives elsewhere: weights (``init_from``, ``freeze``, the random-frozen
check, key migration) in :mod:`vqa_components.weights`; counting skipped samples and screening long
questions in the callback :class:`~vqa_components.data.admission.SkippedSamples`; metrics in the
callback :class:`~vqa_components.metrics.evaluation.AnswerEvaluation`. The model adds both callbacks
to its trainer (``configure_callbacks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from vqa_components import weights
from vqa_components.data.admission import SkippedSamples, batch_size, pair_texts
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
from vqa_components.layers.pixels import pixels_to_float
from vqa_components.metrics.evaluation import AnswerEvaluation
from vqa_components.objectives.collection import ObjectiveDict
from vqa_components.optim import clip_gradients, optimizer_for_precision

#: the parts the model's own forward runs (an objective with ``runs_model_forward`` needs them)
FORWARD_PARTS = ("backbone", "text_encoder", "fusion", "head")


class VideoQAModel(pl.LightningModule):
    """A VideoQA model assembled from parts.

    Args:
        backbone, text_encoder, fusion, head: video -> frame features; question (or caption) -> token
            features; both -> fused features -> answer scores. ``None`` allowed when no objective runs
            the model's forward (``Objective.runs_model_forward``: a first stage training its own encoder).
        objectives: training losses, summed with their ``weight``; kept by name (``objectives.svq``).
        sampler: optional frame selection between backbone and fusion.
        optimizer, scheduler: ``params -> Optimizer``, ``optimizer -> LRScheduler`` (stepped per
            optimizer step); LightningCLI: ``{class_path: torch.optim.AdamW, init_args: {lr: ...}}``.
        text_field: the batch key the text encoder reads (``question``; ``caption`` for pretraining).
        freeze: parts, or dotted paths inside them (``objectives.mvm.tagger``), kept fixed and in eval mode.
        init_from, init_parts, init_rename: a checkpoint, state-dict or ``.safetensors`` file of an earlier
            stage; the parts (or dotted paths) to load from it (default: every part that is there and
            fits); ``{path in the model: path in the file}``. :func:`vqa_components.weights.load_parts`.
        allow_random_frozen: train even if a frozen part still has its random initialisation (timing
            runs, tests); otherwise ``fit`` without ``ckpt_path`` stops with an error.
        feature_cache, feature_cache_dtype: folder and precision (``float32`` exact, ``float16``) of an
            on-disk cache of a frozen, ``cacheable`` backbone's features (``docs/parts/feature_cache.md``).
        on_long_question: a question longer than the text encoder's limit is left out and counted
            (``"skip"``), stops the run naming its record (``"raise"``) or is cut (``"truncate"``), before
            the step (:class:`~vqa_components.data.admission.SkippedSamples`); prediction always cuts.
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
        self.admission = SkippedSamples(on_long_question)  # checks the policy
        self.save_hyperparameters(ignore=[*FORWARD_PARTS, "sampler", "objectives"])
        self.backbone, self.text_encoder, self.sampler = backbone, text_encoder, sampler
        self.fusion, self.head = fusion, head
        self.objectives = ObjectiveDict.of(objectives)
        if not len(self.objectives):
            raise ValueError("VideoQAModel needs at least one objective (e.g. answer_cross_entropy)")
        self.runs_forward = any(getattr(obj, "runs_model_forward", True) for obj in self.objectives)
        head_fuses = head is None or getattr(head, "uses_fusion", True)  # else the fusion may be left out
        missing = [n for n in FORWARD_PARTS if (head_fuses or n != "fusion") and getattr(self, n) is None]
        if self.runs_forward and missing:
            users = [k for k, o in self.objectives.items() if getattr(o, "runs_model_forward", True)]
            raise ConfigError(
                f"the model has no {', '.join(missing)}, but objective(s) {', '.join(users)} run the model's "
                f"forward, which needs {', '.join(FORWARD_PARTS)}: give them in the recipe "
                f"(model.{missing[0]})"
            )
        self.optimizer_factory, self.scheduler_factory, self.text_field = optimizer, scheduler, text_field
        self.allow_random_frozen = allow_random_frozen
        for obj in self.objectives:  # before freezing and loading: what it builds is frozen and loaded too
            obj.attach(self)
        self.frozen_parts = tuple(freeze)
        #: parts given but never run, kept for what they hold (a text encoder's tokenizer): not trained
        self.idle_parts = weights.idle_parts(self)
        weights.freeze(self, (*self.frozen_parts, *self.idle_parts))
        self.init_rename = dict(init_rename or {})
        weights.init_from(self, init_from, init_parts, self.init_rename)
        self.feature_cache = (FeatureCache(feature_cache, self.backbone, dtype=feature_cache_dtype)
                              if feature_cache else None)  # after init_from: fingerprints the final weights
        #: the evaluation context, from the datamodule at setup (or from the checkpoint)
        self.answer_vocab, self.families, self.breakdowns = [], [], {}
        # a new module is in training mode, but transformers builds its models in eval mode, and
        # Lightning keeps each module's mode at fit start: without this, their dropout would be off
        self.train()

    def train(self, mode: bool = True) -> VideoQAModel:
        super().train(mode)
        for path in (*self.frozen_parts, *self.idle_parts):  # frozen modules always run in eval mode
            weights.module_at(self, path, "freeze").eval()
        return self

    def configure_callbacks(self) -> list[pl.Callback]:
        return [self.admission, AnswerEvaluation()]

    # -------------------------------------------------------------- forward
    def encode_text(self, texts: Sequence[str]) -> TextFeatures:
        return self.text_encoder.encode(list(texts))

    def encode_video(
        self, video: Tensor | tuple[Tensor, ...], batch: dict[str, Any] | None = None, use_cache: bool = True
    ) -> VideoFeatures:
        """Backbone features of ``video`` (``uint8`` pixels scaled to ``[0, 1]``), or of the batch's clips
        from the feature cache (``batch["video_key"]``) unless ``use_cache=False`` (changed pixels: MVM)."""
        video = pixels_to_float(video)
        keys = batch.get("video_key") if batch is not None else None
        if self.feature_cache is not None and use_cache and (keys is not None or isinstance(video, list)):
            return self.feature_cache.encode(video, keys, device=self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and "backbone" not in self.frozen_parts):
            return self.backbone(video)

    def fuse(
        self, video: VideoFeatures, text: TextFeatures, run_fusion: bool = True
    ) -> tuple[SamplerOutput | None, FusionOutput]:
        """Sampler and fusion; the output carries the video features it was given (``extras``
        ``["video_features"]``). ``run_fusion=False`` (a head reading unimodal features): no fusion."""
        sampled = self.sampler(video, text) if self.sampler is not None else None
        given = sampled.video if sampled is not None else video
        unfused = None if run_fusion else FusionOutput(pooled=given.cls.mean(1), tokens=given.flat_tokens())
        fused = unfused or self.fusion(given, text)
        fused.extras.setdefault("video_features", given)
        return sampled, fused

    def forward_features(
        self, video: VideoFeatures, text: TextFeatures, targets: Sequence[str] | None = None
    ) -> ModelOutput:
        """Sampler, fusion and head on encoded inputs; ``targets`` go to a head that trains on text. A
        head with ``uses_fusion = False`` reads the video features unfused (objectives call :meth:`fuse`)."""
        run_fusion = self.head is None or getattr(self.head, "uses_fusion", True)
        sampled, fused = self.fuse(video, text, run_fusion=run_fusion)
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
            return self.forward_multiple_choice(video, batch)
        return self.forward_features(video, self.encode_text(batch[self.text_field]), self.targets(batch))

    def targets(self, batch: dict[str, Any]) -> list[str] | None:
        """The answer strings a generating head trains on (teacher forcing), if the batch has them."""
        if self.head is None or self.head.task != "generate" or "answer" not in batch:
            return None
        return list(batch["answer"])

    def forward_multiple_choice(self, video: VideoFeatures, batch: dict[str, Any]) -> ModelOutput:
        """Score each (question, option) pair; logits come back as ``(b, options)``."""
        options: list[list[str]] = batch["options"]
        n = len(options[0])
        if any(len(o) != n for o in options):
            raise ValueError("multiple choice: every question in a batch needs the same number of options")
        texts = [t for q, opts in zip(batch["question"], options) for t in pair_texts(q, opts)]
        out = self.forward_features(video.repeat_interleave(n), self.encode_text(texts))
        out.head.logits = out.head.logits.reshape(len(options), n)
        return out

    def loss(self, batch: dict[str, Any], out: ModelOutput | None, stage: str) -> Tensor:
        """The objectives' weighted sum; each objective's terms are logged as ``<stage>/<name>[_<term>]``."""
        total = torch.zeros((), device=self.device)
        for name, obj in self.objectives.items():
            terms = obj(self, batch, out)
            total = total + obj.weight * terms["loss"]
            for k, v in terms.items():
                key = f"{stage}/{name}" if k == "loss" else f"{stage}/{name}_{k}"
                self.log(key, v.detach().float(), batch_size=batch_size(batch), sync_dist=stage != "train")
        return total

    # ------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if batch_size(batch) == 0:  # every sample was left out (data.admission)
            return None
        out = self(batch) if self.runs_forward else None
        loss = self.loss(batch, out, "train")
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size(batch))
        # generating every answer would cost more than the training step
        if out is not None and self.head.task != "generate" and self.head.has_ground_truth(batch):
            self.log("train/acc", self.head.score(self.head.answers(out), batch).mean(), prog_bar=True,
                     batch_size=batch_size(batch))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> ModelOutput | None:
        if batch_size(batch) == 0:  # the output goes to the metrics (metrics.evaluation)
            return None
        out = self(batch) if self.runs_forward else None
        loss = self.loss(batch, out, stage)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch_size(batch), sync_dist=True)
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> ModelOutput | None:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> ModelOutput | None:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        preds = self.head.answer_texts(self.head.answers(self(batch)), batch, self.answer_vocab)
        rows = zip(batch.get("video_id") or [None] * len(preds), batch["question"], preds, strict=True)
        return [{"video_id": v, "question": q, "prediction": p} for v, q, p in rows]

    # ------------------------------------------------------------ setup and checkpoints
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        self.answer_vocab = list(getattr(dm, "answer_vocab", []) or []) or self.answer_vocab
        n, vocab = getattr(self.head, "num_answers", None), self.answer_vocab
        if vocab and getattr(self.head, "task", None) == "classify" and n is not None and n != len(vocab):
            raise ValueError(f"head.num_answers={n} but the dataset has {len(vocab)} answers; "
                             f"set model.head.init_args.num_answers: {len(vocab)} in the recipe")
        self.families = list(getattr(dm, "families", []) or [])
        self.breakdowns = {str(k): list(v) for k, v in (getattr(dm, "breakdowns", None) or {}).items()}

    def on_fit_start(self) -> None:  # a resumed run (ckpt_path) takes its weights from the checkpoint
        if not self.trainer.strategy.restore_checkpoint_after_setup and self.trainer.ckpt_path is None:
            weights.check_frozen_parts_have_weights(self)

    def on_train_start(self) -> None:  # strategies that load the checkpoint after setup
        if self.trainer.strategy.restore_checkpoint_after_setup and self.trainer.ckpt_path is None:
            weights.check_frozen_parts_have_weights(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(answer_vocab=self.answer_vocab, families=self.families, breakdowns=self.breakdowns)
        if isinstance(checkpoint.get("hyper_parameters"), dict):  # readable with weights_only=True
            checkpoint["hyper_parameters"] = weights.loadable_hparams(checkpoint["hyper_parameters"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if isinstance(checkpoint.get("state_dict"), dict):  # runs before Lightning loads the weights
            names = list(self.objectives.keys())
            checkpoint["state_dict"] = weights.migrate_objective_keys(checkpoint["state_dict"], names)
        self.answer_vocab = checkpoint.get("answer_vocab", [])
        self.families = checkpoint.get("families", [])
        self.breakdowns = checkpoint.get("breakdowns", {})

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self._trainer is not None:
            trainer = self.trainer
            optimizer = optimizer_for_precision(optimizer, str(trainer.precision), trainer.gradient_clip_val)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # bf16 + fused optimizers
