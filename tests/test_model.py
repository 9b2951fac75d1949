"""VideoQAModel: assembly from parts, freezing, loading parts from an earlier stage, multiple choice,
modules inside parts and objectives by name. Its callbacks: tests/data/test_admission.py (the samples
a stage leaves out) and tests/metrics/test_evaluation.py (the head task's metric)."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch
from helpers import D, tiny_model
from helpers import tiny_batch as batch

from vqa_components import create, weights
from vqa_components.interfaces import ConfigError
from vqa_components.model import VideoQAModel


def test_forward_and_training_step_backprop_into_every_part():
    model = tiny_model()
    out = model(batch())
    assert out.logits.shape == (3, 5)
    assert out.video.tokens.shape == (3, 4, 4, D) and out.text.cls.shape == (3, D)
    loss = model.loss(batch(), out, "train")
    loss.backward()
    for name in ("backbone", "text_encoder", "fusion", "head"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_frozen_parts_get_no_gradient_and_stay_in_eval_mode():
    model = tiny_model(freeze=["backbone"])
    model.train()
    assert not model.backbone.training and model.fusion.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    opt = model.configure_optimizers()
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in model.backbone.parameters()}
    with pytest.raises(ValueError, match="no part 'trunk'"):
        tiny_model(freeze=["trunk"])


def test_init_from_loads_named_parts_of_an_earlier_stage(tmp_path):
    first = tiny_model()
    torch.save({"state_dict": first.state_dict()}, tmp_path / "stage1.ckpt")
    second = tiny_model(init_from=str(tmp_path / "stage1.ckpt"), init_parts=["backbone"])
    for a, b in zip(first.backbone.state_dict().values(), second.backbone.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(first.head.mlp[0].weight, second.head.mlp[0].weight)  # not asked for
    assert second.backbone.weights_source == f"{tmp_path / 'stage1.ckpt'} (init_from)"
    assert second.head.weights_source is None
    with pytest.raises(ConfigError, match="missing.ckpt"):
        tiny_model(init_from=str(tmp_path / "missing.ckpt"))


def test_init_parts_without_init_from_is_an_error_that_says_how_to_proceed():
    with pytest.raises(ValueError) as err:
        tiny_model(init_parts=["text_encoder", "fusion"])
    msg = str(err.value)
    assert "--model.init_from" in msg and "--model.init_parts null" in msg and "\n" not in msg
    assert tiny_model(init_parts=None).frozen_parts == ()  # null: from scratch, no error


def test_default_init_from_loads_the_parts_that_fit_and_logs_the_others(tmp_path, caplog):
    """A pretraining checkpoint (vtm_choice head, objectives with weights) into a QA model: the
    default loads what fits and says why the rest was not loaded, instead of a strict-load error."""
    pretrain = tiny_model(
        head=create("head", "vtm_choice", in_dim=D),
        objectives=[create("objective", "vtm", in_dim=D), create("objective", "answer_cross_entropy")],
    )
    torch.save({"state_dict": pretrain.state_dict()}, tmp_path / "pretrain.ckpt")
    with caplog.at_level(logging.INFO, logger="vqa_components.weights"):
        qa = tiny_model(init_from=str(tmp_path / "pretrain.ckpt"))
    for name in ("backbone", "text_encoder", "fusion"):
        for a, b in zip(getattr(pretrain, name).state_dict().values(), getattr(qa, name).state_dict().values()):
            assert torch.equal(a, b), name
    line = next(r.getMessage() for r in caplog.records if "init_from" in r.getMessage())
    assert "loaded backbone, text_encoder, fusion;" in line
    assert "head (does not fit: missing keys" in line and "mlp.0.weight" in line
    assert "objectives.answer_cross_entropy (the model's part has no weights)" in line
    assert "objectives.vtm (in the file, but the model has no such objective)" in line
    # named parts stay strict: one the file lacks, or one that does not fit, is an error
    torch.save({"state_dict": {k: v for k, v in pretrain.state_dict().items() if not k.startswith("fusion.")}},
               tmp_path / "no_fusion.ckpt")
    with pytest.raises(ConfigError, match="holds no weights for part 'fusion'"):
        tiny_model(init_from=str(tmp_path / "no_fusion.ckpt"), init_parts=["fusion"])
    with pytest.raises(ConfigError, match="does not fit part 'head'"):
        tiny_model(init_from=str(tmp_path / "pretrain.ckpt"), init_parts=["head"])


def _fit(model: VideoQAModel, tmp_path, ckpt_path=None, steps: int = 1) -> pl.Trainer:
    loader = torch.utils.data.DataLoader([batch()], batch_size=None)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


def test_fit_refuses_frozen_random_weights_unless_loaded_allowed_or_resumed(tmp_path):
    with pytest.raises(ConfigError) as err:
        _fit(tiny_model(freeze=["backbone"]), tmp_path)
    msg = str(err.value)
    assert "backbone" in msg and "random" in msg and "--model.allow_random_frozen true" in msg
    trainer = _fit(tiny_model(freeze=["backbone"], allow_random_frozen=True), tmp_path)  # timing runs, tests
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    assert "state_dict" in torch.load(tmp_path / "run.ckpt", weights_only=True)  # no optimizer class in it
    # resuming: the weights come from the checkpoint, so the part counts as initialised
    assert _fit(tiny_model(freeze=["backbone"]), tmp_path, ckpt_path=str(tmp_path / "run.ckpt"), steps=2).global_step == 2
    # an earlier stage's weights
    _fit(tiny_model(freeze=["backbone"], init_from=str(tmp_path / "run.ckpt"), init_parts=["backbone"]), tmp_path)
    # the part's own loading code
    loaded = tiny_model(freeze=["backbone"])
    loaded.backbone.weights_source = "/weights/frame_cnn.safetensors"
    _fit(loaded, tmp_path)
    assert weights.random_frozen_parts(tiny_model(freeze=["backbone", "head"])) == ["backbone", "head"]
    assert weights.random_frozen_parts(tiny_model(freeze=["backbone"], backbone=create("backbone", "blind", dim=D))) == []


def test_multiple_choice_regroups_pair_scores():
    head = create("head", "answer_classifier", in_dim=D, num_answers=1, hidden_dim=0)
    head.task = "multiple_choice"
    model = tiny_model(head=head)
    b = batch(2)
    b["options"] = [["red", "green", "blue"], ["one", "two", "three"]]
    b["answer_idx"] = torch.tensor([2, 0])
    out = model(b)
    model.loss(b, out, "train").backward()
    # cell [i, j] is the score of question i with option j, as a single-pair forward computes it
    model.eval()
    out = model(b)
    ref = torch.zeros(2, 3)
    for i in range(2):
        for j, option in enumerate(b["options"][i]):
            ref[i, j] = model({"video": b["video"][i : i + 1], "question": [f"{b['question'][i]} {option}"]}).logits[0, 0]
    torch.testing.assert_close(out.logits, ref)
    preds = model.predict_step(b, 0)
    assert [p["prediction"] for p in preds] == [b["options"][i][int(ref[i].argmax())] for i in range(2)]


# ------------------------------------------------- stages, modules inside parts, objectives by name
from torch import nn

from vqa_components.interfaces import Objective


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.drop = nn.Dropout(0.5)


class StageOne(Objective):
    """A first stage with its own encoder (as E-ViLM's tokenizer): needs no model forward."""

    runs_model_forward = False

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = _Encoder()

    def forward(self, model, batch, out):
        assert out is None
        pixels = batch["video"].float().mean(dim=(1, 3, 4))  # (b, 3)
        return {"loss": self.tokenizer.proj(pixels).pow(2).mean()}


class StageTwo(Objective):
    """A later stage that keeps the first stage's encoder inside it, frozen (a tagger)."""

    def __init__(self) -> None:
        super().__init__()
        self.tagger = _Encoder()

    def forward(self, model, batch, out):
        return {"loss": out.logits.logsumexp(-1).mean()}


def test_objectives_are_kept_by_name_and_files_that_kept_them_by_position_still_load(tmp_path):
    model = tiny_model(objectives=[create("objective", "vtm", in_dim=D), create("objective", "vtm", in_dim=D),
                                   create("objective", "answer_cross_entropy")])
    assert list(model.objectives.keys()) == ["vtm", "vtm_2", "answer_cross_entropy"]
    assert model.objectives[1] is model.objectives["vtm_2"] and len(list(model.objectives)) == 3
    assert any(k.startswith("objectives.vtm_2.") for k in model.state_dict())
    # a file written when objectives were a list: objectives.<i>.* goes to the i-th objective by name
    old = {k.replace("objectives.vtm_2.", "objectives.1.").replace("objectives.vtm.", "objectives.0."): v.clone() + 1
           for k, v in model.state_dict().items()}
    assert not any(k.startswith("objectives.vtm") for k in old)
    torch.save({"state_dict": old}, tmp_path / "old.ckpt")
    again = tiny_model(objectives=[create("objective", "vtm", in_dim=D), create("objective", "vtm", in_dim=D),
                                   create("objective", "answer_cross_entropy")], init_from=str(tmp_path / "old.ckpt"))
    for k, v in again.state_dict().items():
        if k.startswith("objectives."):
            assert torch.equal(v, model.state_dict()[k] + 1), k


def test_a_model_whose_objectives_run_no_forward_needs_no_backbone_fusion_or_head(tmp_path):
    stage1 = VideoQAModel(
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        objectives=[StageOne()],
    )
    # the text encoder is kept (for its tokenizer) but never run: not trained, not checked for weights
    assert stage1.idle_parts == ("text_encoder",)
    assert not any(p.requires_grad for p in stage1.text_encoder.parameters())
    before = stage1.objectives["stageone"].tokenizer.proj.weight.clone()
    _fit(stage1, tmp_path, steps=2)
    assert not torch.equal(before, stage1.objectives["stageone"].tokenizer.proj.weight)  # it trained
    with pytest.raises(ConfigError, match="no forward of its own"):
        stage1(batch())
    # an objective that runs the model's forward needs the forward's parts: one line naming the first
    with pytest.raises(ConfigError, match=r"the model has no backbone, fusion, head, but objective\(s\) stagetwo"):
        VideoQAModel(text_encoder=create("text_encoder", "small_transformer", dim=D), objectives=[StageTwo()])


def test_stage_two_loads_a_module_inside_an_objective_from_stage_one_by_name_and_keeps_it_frozen(tmp_path):
    stage1 = VideoQAModel(objectives=[StageOne()])
    torch.save({"state_dict": stage1.state_dict()}, tmp_path / "stage1.ckpt")
    path = "objectives.stagetwo.tagger"
    frozen_random = tiny_model(objectives=[create("objective", "answer_cross_entropy"), StageTwo()], freeze=[path])
    assert weights.random_frozen_parts(frozen_random) == [path]
    stage2 = tiny_model(
        objectives=[create("objective", "answer_cross_entropy"), StageTwo()], freeze=[path],
        init_from=str(tmp_path / "stage1.ckpt"), init_parts=[path],
        init_rename={path: "objectives.stageone.tokenizer"},
    )  # fmt: skip
    tagger = stage2.objectives["stagetwo"].tagger
    assert torch.equal(tagger.proj.weight, stage1.objectives["stageone"].tokenizer.proj.weight)
    assert weights.random_frozen_parts(stage2) == []
    assert not any(p.requires_grad for p in tagger.parameters())
    stage2.train()
    assert stage2.fusion.training and not tagger.training and not tagger.drop.training
    opt = stage2.configure_optimizers()
    assert not {id(p) for g in opt.param_groups for p in g["params"]} & {id(p) for p in tagger.parameters()}
    # errors name the path and what exists there
    with pytest.raises(ConfigError, match=r"no module 'objectives.stagetwo.tager'; there are: objectives.stagetwo.tagger"):
        tiny_model(objectives=[StageTwo()], freeze=["objectives.stagetwo.tager"])
    with pytest.raises(ConfigError, match=r"holds no weights for module 'objectives.stagetwo.tagger'.*init_rename"):
        tiny_model(objectives=[StageTwo()], init_from=str(tmp_path / "stage1.ckpt"), init_parts=[path])
    with pytest.raises(ConfigError, match="init_rename .* is set but init_parts is not"):
        tiny_model(objectives=[StageTwo()], init_from=str(tmp_path / "stage1.ckpt"),
                   init_rename={path: "objectives.stageone.tokenizer"})


def test_a_head_that_reads_no_fused_value_skips_the_fusion_and_leaves_it_untrained():
    head = create("head", "unimodal_retrieval", video_dim=D, text_dim=D, embed_dim=8)
    model = tiny_model(head=head, objectives=[create("objective", "answer_cross_entropy")])
    assert model.idle_parts == ("fusion",) and not any(p.requires_grad for p in model.fusion.parameters())
    calls = []
    model.fusion.register_forward_hook(lambda *a: calls.append(1))
    model.eval()  # no dropout: the reference below encodes again
    b = batch()
    out = model(b)
    assert calls == [] and out.logits.shape == (3, 3)
    # the head saw the backbone's own features: the same logits as from them directly
    video = model.encode_video(b["video"])
    text = model.encode_text(b["question"])
    emb_v = torch.nn.functional.normalize(head.embed_video(video.cls.mean(1)), dim=-1)
    emb_t = torch.nn.functional.normalize(head.embed_text(text.cls), dim=-1)
    torch.testing.assert_close(out.logits, emb_v @ emb_t.T * head.scale)
    # without a fusion at all, the model still assembles
    assert tiny_model(head=create("head", "unimodal_retrieval", video_dim=D, text_dim=D), fusion=None).fusion is None


def test_a_new_model_is_in_training_mode_even_with_parts_built_in_eval_mode(minilm_folder):
    encoder = create("text_encoder", "bert", vocab_file=str(minilm_folder / "vocab.txt"), hidden_size=D,
                     intermediate_size=2 * D, num_layers=1, num_heads=2, dim=D)
    assert not encoder.model.training  # as the encoder builds it (from_pretrained leaves eval mode)
    model = tiny_model(text_encoder=encoder, freeze=["backbone"])
    assert model.text_encoder.model.training and model.fusion.training
    assert not model.backbone.training  # frozen parts stay in eval


def test_objectives_that_read_the_fusion_s_tokens_keep_it_running_beside_a_head_that_skips_it():
    head = create("head", "unimodal_retrieval", video_dim=D, text_dim=D, embed_dim=8)
    fusion = create("fusion", "merged_transformer", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2)
    model = tiny_model(head=head, fusion=fusion, objectives=[create("objective", "mlm")])
    assert model.idle_parts == () and all(p.requires_grad for p in model.fusion.parameters())
    b = batch()
    out = model(b)
    assert "text_tokens" not in out.fused.extras  # the head's path skipped the fusion
    model.objectives["mlm"](model, b, out)["loss"].backward()  # mlm's own pass ran it
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())


def test_what_an_objective_builds_when_attached_can_be_frozen_by_path():
    fusion = create("fusion", "merged_transformer", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2)
    model = tiny_model(fusion=fusion, objectives=[create("objective", "mlm")], freeze=["objectives.mlm.head"],
                       allow_random_frozen=True)
    assert not any(p.requires_grad for p in model.objectives["mlm"].head.parameters())
    whole = tiny_model(fusion=fusion, objectives=[create("objective", "mlm")], freeze=["objectives"])
    assert not any(p.requires_grad for p in whole.objectives.parameters())
