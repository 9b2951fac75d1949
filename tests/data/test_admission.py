"""SkippedSamples, the callback every VideoQAModel brings to its trainer: what each stage leaves out is
counted and reported at the epoch's end, questions too long for the text encoder are screened before
the step, and the model's steps receive only the samples that are left."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from helpers import D, tiny_model
from helpers import tiny_batch as batch

from vqa_components import create
from vqa_components.data.admission import SkippedSamples
from vqa_components.interfaces import ConfigError

#: what the callback reads of a trainer that has no loaders (the tests below call it directly)
TRAINER = SimpleNamespace(global_rank=0, train_dataloader=None, val_dataloaders=None, test_dataloaders=None)
LONG_QUESTION = "what colour is the ball that the man in the red coat throws at the wall"  # > 8 tokens


def test_skipped_samples_are_reported_per_stage_and_cause_at_epoch_end(caplog):
    from vqa_components.data.bad_input import SkippedSample

    model, skips = tiny_model(), SkippedSamples()
    corrupt = SkippedSample(3, "a", "/d/a.mp4", "corrupt video data", cause="undecodable_video")
    gone = SkippedSample(9, "b", "/d/b.mp4", "file not found", cause="missing_video")
    skips.admit(TRAINER, model, {**batch(), "num_skipped": 2, "skipped": [gone, corrupt]}, "train")
    skips.admit(TRAINER, model, {**batch(), "num_skipped": 1, "skipped": [corrupt]}, "val")  # its own report
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    with caplog.at_level("WARNING"):
        skips.on_train_epoch_end(TRAINER, model)
    assert logged == {"train/skipped_videos": 2.0, "train/skipped_missing_video": 1.0, "train/skipped_undecodable_video": 1.0}
    assert "train epoch: left out 2 sample(s): missing_video 1, undecodable_video 1" in caplog.text
    assert "missing_video: b;" in caplog.text and "undecodable_video: a;" in caplog.text
    skips.on_train_epoch_end(TRAINER, model)  # the next epoch starts from nothing
    assert logged["train/skipped_videos"] == 0.0
    skips.on_validation_epoch_end(TRAINER, model)
    assert skips.summaries["val"].counts == {"undecodable_video": 1}


def test_questions_longer_than_the_text_encoder_s_limit_are_left_out_or_stop_the_run():
    from vqa_components.data.bad_input import QuestionTooLongError

    data = {**batch(), "question": ["what color?", LONG_QUESTION, "which way?"], "index": torch.tensor([0, 1, 2]),
            "video_id": ["v0", "v1", "v2"]}  # fmt: skip
    encoder = {"dim": D, "num_layers": 1, "num_heads": 2, "max_length": 8}
    model = tiny_model(text_encoder=create("text_encoder", "small_transformer", **encoder))
    model.log = lambda *a, **k: None
    skips, evaluation = model.configure_callbacks()
    train = dict(data)
    skips.admit(TRAINER, model, train, "train")  # in place: the step gets what is left
    assert train["video_id"] == ["v0", "v2"] and model.training_step(train, 0) is not None
    val = dict(data)
    skips.admit(TRAINER, model, val, "val")
    evaluation.update(model, model.validation_step(val, 0), val, "val")
    assert evaluation.metric(model, "val").compute()["num_samples"] == 2  # the long question was not scored
    summary = skips.report(TRAINER, model, "train")
    assert summary.counts == {"question_too_long": 1} and summary.first["question_too_long"][0].video_id == "v1"
    strict = tiny_model(text_encoder=create("text_encoder", "small_transformer", **encoder), on_long_question="raise")
    with pytest.raises(QuestionTooLongError, match=r"a train batch: record 1 \[video_id='v1'\]: field 'question'"):
        strict.configure_callbacks()[0].admit(TRAINER, strict, dict(data), "train")
    lenient = tiny_model(text_encoder=create("text_encoder", "small_transformer", **encoder), on_long_question="truncate")
    kept = dict(data)
    lenient.configure_callbacks()[0].admit(TRAINER, lenient, kept, "val")
    assert kept["video_id"] == ["v0", "v1", "v2"]


class _Loader(torch.utils.data.Dataset):
    """Three samples per batch, the second with a question longer than the encoder's limit."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        return {**batch(), "question": ["what color?", LONG_QUESTION, "which way?"],
                "index": torch.tensor([0, 1, 2]) + 3 * i, "video_id": [f"v{3 * i}", f"v{3 * i + 1}", f"v{3 * i + 2}"]}


def test_a_plain_trainer_gets_the_callbacks_and_the_steps_see_only_the_samples_left(tmp_path):
    """No CLI: Lightning adds the model's callbacks, hands the screened batch to the steps, and the
    epoch's report and accuracy are logged."""
    model = tiny_model(text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2,
                                           max_length=8))
    seen = {"train": [], "val": []}
    for stage, step in (("train", "training_step"), ("val", "validation_step")):
        original = getattr(model, step)

        def spy(data, batch_idx, original=original, stage=stage):
            seen[stage].append(list(data["video_id"]))
            return original(data, batch_idx)

        setattr(model, step, spy)
    loader = torch.utils.data.DataLoader(_Loader(), batch_size=None)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)
    assert seen["train"] == seen["val"] == [["v0", "v2"], ["v3", "v5"]]
    skips = next(c for c in trainer.callbacks if isinstance(c, SkippedSamples))
    assert skips.summaries["train"].counts == skips.summaries["val"].counts == {"question_too_long": 2}
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert logged["train/skipped_question_too_long"] == logged["val/skipped_question_too_long"] == 2.0
    assert logged["val/num_samples"] == 4.0 and 0.0 <= logged["val/acc"] <= 1.0


def test_an_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="on_long_question must be one of skip, raise, truncate"):
        tiny_model(on_long_question="cut")
