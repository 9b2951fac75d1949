"""The LightningModule that trains a VideoQA model assembled from parts::

    batch ─> encode_video (backbone) ───┐
          └> encode_text (text_encoder) ┴> fuse (sampler, fusion) ─> head ─> ModelOutput ─> objectives

The forward, up to ``ModelOutput``, is :class:`~vqa_components.pipeline.VideoQAPipeline`'s (it runs
without Lightning, for answering); this class adds the objectives, the steps and the optimiser.
Each part is a constructor argument, so a LightningCLI recipe names it (by registry name or
``class_path``) and any mix of compatible parts trains (``docs/concepts.md``).

What is not the data flow lives elsewhere: weights (``init_from``, ``freeze``, the random-frozen
check, key migration) in :mod:`vqa_components.weights`; model folders (``from_pretrained``) in
:mod:`vqa_components.model_folder`; counting skipped samples and screening long questions in the
callback :class:`~vqa_components.data.admission.SkippedSamples`; metrics in the callback
:class:`~vqa_components.metrics.evaluation.AnswerEvaluation`. The model adds both callbacks to its
trainer (``configure_callbacks``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from vqa_components import weights
from vqa_components.data.admission import SkippedSamples, batch_size
from vqa_components.data.feature_cache import FeatureCache
from vqa_components.interfaces import (
    Backbone,
    ConfigError,
    Fusion,
    Head,
    ModelOutput,
    Objective,
    Sampler,
    TextEncoder,
)
from vqa_components.metrics.evaluation import AnswerEvaluation
from vqa_components.objectives.collection import ObjectiveDict
from vqa_components.optim import clip_gradients, optimizer_for_precision
from vqa_components.pipeline import FORWARD_PARTS, VideoQAPipeline


class VideoQAModel(VideoQAPipeline, pl.LightningModule):
    """A VideoQA model assembled from parts, trained by Lightning (the forward: :class:`VideoQAPipeline`).

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
        masked_pass: which forward the objectives read in training, validation and test steps:
            ``"separate"`` (default) the default forward, each masking objective (``mlm``, ``mvm``)
            running its own masked pass; ``"single"`` one forward on the masked video and the masked
            text that every objective reads (E-ViLM's Fig. 3;
            :mod:`vqa_components.objectives.masked_pass`), a pretraining option: the step's answer
            metrics are then of the masked inputs too. Answering (``forward``, predict) never masks.
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
        masked_pass: str = "separate",
    ) -> None:
        super().__init__(backbone, text_encoder, fusion, head, sampler, text_field)
        self.admission = SkippedSamples(on_long_question)  # checks the policy
        self.save_hyperparameters(ignore=[*FORWARD_PARTS, "sampler", "objectives"])
        self.objectives = ObjectiveDict.of(objectives, masked_pass)
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
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
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

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike) -> VideoQAModel:
        """The model of a model folder (``vqa export``) or a Hugging Face hub id holding one, weights and
        answer vocabulary included; YAML and safetensors only
        (:func:`vqa_components.model_folder.load_model`)."""
        from vqa_components.model_folder import load_model

        return load_model(name, cls)

    def configure_callbacks(self) -> list[pl.Callback]:
        return [self.admission, AnswerEvaluation()]

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
        out = self.objectives.model_output(self, batch)
        loss = self.loss(batch, out, "train")
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size(batch))
        # generating every answer would cost more than the training step
        scored = out is not None and out.head is not None  # not a backbone-only step (caption pretraining)
        if scored and self.head.task != "generate" and self.head.has_ground_truth(batch):
            self.log("train/acc", self.head.score(self.head.answers(out), batch).mean(), prog_bar=True,
                     batch_size=batch_size(batch))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> ModelOutput | None:
        if batch_size(batch) == 0:  # the output goes to the metrics (metrics.evaluation)
            return None
        out = self.objectives.model_output(self, batch)
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
        self.check_data_fits(dm)

    def check_data_fits(self, dm: Any) -> None:
        """Stop at start-up, in one line, where the head or an objective cannot use the data
        (the datamodule's ``kind``, read without decoding a video): a classifier on multiple-choice
        questions would learn the right option's position and never see the options; objectives check
        what they read (their ``check_data``)."""
        kind, dataset = getattr(dm, "kind", None), getattr(dm, "dataset_name", "the dataset")
        kind = kind if isinstance(kind, str) else None
        if kind == "multiple_choice" and getattr(self.head, "task", None) == "classify":
            head = getattr(self.head, "registry_name", type(self.head).__name__)
            raise ConfigError(
                f"head {head} scores a fixed answer vocabulary, but dataset {dataset} is multiple choice "
                f"(its answer_idx is the right option's position): the head would never see the options; "
                f"use a multiple-choice head that scores each option, e.g. "
                f"model.head: {{name: vtm_choice, in_dim: ...}}"
            )
        for obj in self.objectives:
            check = getattr(obj, "check_data", None)
            if check is not None and kind is not None:
                check(kind, dataset, self.head)

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
