"""Model folders (``vqa_components.model_folder``): ``export`` writes a self-contained folder of YAML,
JSON and safetensors; ``VideoQAModel.from_pretrained`` and the Lightning-free pipeline rebuild the
same model from it (identical outputs), for each kind of head, from a folder or a hub id, offline."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import yaml
from helpers import build_model, fill_hub_cache, sentencepiece_model, t5_repository, use_hub_cache

from vqa_components.errors import ConfigError
from vqa_components.model import VideoQAModel
from vqa_components.model_folder import CONFIG_FILE, WEIGHTS_FILE, export, load_pipeline, read_config

#: a model of each kind of head: the recipe, then command-line overrides
CLASSIFIER = ("recipes/quickstart.yaml",)
MULTIPLE_CHOICE = ("recipes/quickstart.yaml", "--model.head=vtm_choice", "--model.head.in_dim=128")
GENERATING = ("recipes/cotok/tiny/question_only.yaml",)


build = build_model  # the recipe's model, its datamodule and its resolved configuration


def eval_batch(dm, options: bool = False) -> dict:
    from vqa_components.data.datamodule import collate_videoqa

    dataset = dm.dataset("test")
    batch = collate_videoqa([dataset[i] for i in range(3)])
    if options:
        batch["options"] = [["red", "blue", "left"], ["one", "two", "three"], ["stripes", "dots", "plain"]]
    return batch


def outputs(model, batch) -> tuple[torch.Tensor, list]:
    with torch.no_grad():
        return model(batch).logits, [r["answer"] for r in model.answer(batch)]


@pytest.mark.parametrize("spec", [CLASSIFIER, MULTIPLE_CHOICE, GENERATING], ids=["classify", "multiple_choice", "generate"])
def test_from_pretrained_and_the_pipeline_give_the_exported_models_outputs(tmp_path, spec):
    recipe = spec[0]
    model, dm, config = build(*spec)
    task = model.head.task
    batch = eval_batch(dm, options=task == "multiple_choice")
    logits, answers = outputs(model, batch)
    folder = export(model, config, tmp_path / "model", recipe=recipe)

    loaded = VideoQAModel.from_pretrained(folder).eval()
    pipeline = load_pipeline(folder)
    for rebuilt in (loaded, pipeline):
        got_logits, got_answers = outputs(rebuilt, batch)
        torch.testing.assert_close(got_logits, logits, rtol=0, atol=0)
        assert got_answers == answers
    assert loaded.answer_vocab == model.answer_vocab == pipeline.answer_vocab
    # the objectives came back too (the model can train on), and the state is the whole state
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if task == "generate":  # teacher-forced logits above; generated text from the same weights
        assert all(isinstance(a, str) for a in answers)
    if task == "classify":
        assert set(answers) <= set(model.answer_vocab)


def test_the_folder_holds_yaml_json_and_safetensors_and_loads_without_unpickling(tmp_path, monkeypatch):
    model, dm, config = build(*CLASSIFIER)
    folder = export(model, config, tmp_path / "model", recipe=CLASSIFIER[0])
    names = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert names == ["README.md", "answer_vocab.json", CONFIG_FILE, WEIGHTS_FILE]  # no extra state here
    document = yaml.safe_load((folder / CONFIG_FILE).read_text())
    assert document["video"] == {"streams": [[4, 64]], "multi_stream": False, "resize_short": None, "crop_size": None}
    assert document["data"]["dataset"] == "synthetic_vqa"
    assert json.loads((folder / "answer_vocab.json").read_text()) == model.answer_vocab

    def refuse(*args, **kwargs):
        raise AssertionError("a model folder was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    batch = eval_batch(dm)
    torch.testing.assert_close(outputs(VideoQAModel.from_pretrained(folder).eval(), batch)[0], outputs(model, batch)[0])


def test_a_transformers_part_travels_as_its_config_and_tokenizer(tmp_path, monkeypatch):
    """A T5 named by hub id (SentencePiece vocabulary) exports as config.json + tokenizer files, no weights;
    the folder then loads with an empty hub cache, offline."""
    small = {"vocab_size": 448, "d_model": 96, "d_kv": 24, "d_ff": 192, "num_layers": 2, "num_heads": 4,
             "feed_forward_proj": "relu", "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
    use_hub_cache(monkeypatch, tmp_path / "hub")
    t5_repository(tmp_path / "hub", "org/t5-small-test", sentencepiece_model(tmp_path), config=small)
    model, dm, config = build(
        GENERATING[0], "--model.text_encoder.init_args.config=null",
        "--model.text_encoder.init_args.tokenizer_path=null",
        "--model.text_encoder.init_args.pretrained_path=org/t5-small-test",
    )
    batch = eval_batch(dm)
    logits, answers = outputs(model, batch)
    folder = export(model, config, tmp_path / "model")
    carried = folder / "files" / "text_encoder-pretrained_path"
    assert (carried / "config.json").is_file() and (carried / "spiece.model").is_file()
    assert not any(p.suffix in (".safetensors", ".bin") for p in carried.iterdir())  # model.safetensors has them

    use_hub_cache(monkeypatch, tmp_path / "empty-hub")
    pipeline = load_pipeline(folder)
    assert type(pipeline.text_encoder.tokenizer).__name__.startswith("T5Tokenizer")
    got_logits, got_answers = outputs(pipeline, batch)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=0)
    assert got_answers == answers
    assert read_config(folder)["model"]["text_encoder"]["init_args"]["pretrained_path"] == str(carried)


def test_a_model_folder_loads_by_hub_id_from_the_cache_and_a_missing_one_is_one_line(tmp_path, monkeypatch):
    model, dm, config = build(*CLASSIFIER)
    folder = export(model, config, tmp_path / "model")
    use_hub_cache(monkeypatch, tmp_path / "hub")
    fill_hub_cache(tmp_path / "hub", "someone/quickstart-vqa", folder)
    batch = eval_batch(dm)
    loaded = VideoQAModel.from_pretrained("someone/quickstart-vqa").eval()
    torch.testing.assert_close(outputs(loaded, batch)[0], outputs(model, batch)[0], rtol=0, atol=0)
    with pytest.raises(ConfigError) as info:
        VideoQAModel.from_pretrained("someone/not-there")
    message = str(info.value)
    assert "\n" not in message and "someone/not-there" in message and str(tmp_path / "hub") in message
    assert "hf download someone/not-there" in message


def test_a_folder_that_is_not_a_model_folder_is_named(tmp_path):
    model, _, config = build(*CLASSIFIER)
    folder = export(model, config, tmp_path / "model")
    (folder / WEIGHTS_FILE).rename(tmp_path / "aside.safetensors")
    with pytest.raises(ConfigError, match=f"{folder} is not a model folder .no {WEIGHTS_FILE}"):
        VideoQAModel.from_pretrained(folder)
    other, _, other_config = build(CLASSIFIER[0], "--model.fusion.num_layers=1")
    export(other, other_config, tmp_path / "other")
    (tmp_path / "other" / WEIGHTS_FILE).rename(folder / WEIGHTS_FILE)  # weights of another architecture
    with pytest.raises(ConfigError, match="the weights do not fit the model its config.yaml builds .missing: fusion"):
        load_pipeline(folder)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not an earlier model folder"):
        export(model, config, tmp_path / "busy")


def test_a_part_file_the_folder_would_not_carry_is_refused(tmp_path):
    model, _, config = build(*CLASSIFIER)
    elsewhere = tmp_path / "lookup.json"
    elsewhere.write_text("{}")
    config["model"]["head"]["init_args"]["labels_file"] = str(elsewhere)  # an argument export does not know
    with pytest.raises(ConfigError, match="model.head.labels_file names the file"):
        export(model, config, tmp_path / "model")


def test_files_a_part_reads_are_copied_and_found_again(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *["what", "color", "is", "the", "ball", "moving", "left"]]))
    model, dm, config = build(
        CLASSIFIER[0], "--model.text_encoder=bert", f"--model.text_encoder.vocab_file={vocab}",
        "--model.text_encoder.dim=128", "--model.text_encoder.num_layers=1",
    )
    folder = export(model, config, tmp_path / "model")
    vocab.unlink()  # the folder's copy is what loads
    assert (folder / "files" / "text_encoder-vocab_file" / "vocab.txt").is_file()
    batch = eval_batch(dm)
    torch.testing.assert_close(outputs(load_pipeline(folder), batch)[0], outputs(model, batch)[0], rtol=0, atol=0)


def test_the_model_card_reports_the_runs_own_figures(tmp_path):
    from vqa_components.profiler import profile_model

    model, dm, config = build(*CLASSIFIER)
    metrics = {"test/acc": 0.8125, "test/acc_motion": 0.5, "test/num_samples": 16.0,
               "protocol": {"metric": "accuracy"}}
    profile = profile_model(model, dm.example_batch(batch_size=1))
    folder = export(model, config, tmp_path / "model", recipe=CLASSIFIER[0], test_metrics=metrics, profile=profile)
    card = (folder / "README.md").read_text()
    assert "| acc | 81.25 % |" in card and "| acc_motion | 50.00 % |" in card and "| num_samples | 16 |" in card
    assert f"{profile.params / 1e6:.3f} M parameters" in card and f"{profile.gmacs:.4g} GMACs" in card
    assert "`vqa_components.fusion.cross_attention.CrossAttentionFusion`" in card
    assert "Recipe: `recipes/quickstart.yaml`" in card and "Protocol: metric: accuracy" in card
    assert "4 evenly spaced frames at 64" in card


def test_a_pretrained_name_is_not_looked_up_again_and_a_weights_file_is_not_carried(tmp_path, monkeypatch):
    """timm ``pretrained: true`` reads the hub cache when the run builds the model; the folder then loads
    with an empty cache (its weights are in model.safetensors), and a ``checkpoint`` file is dropped."""
    import timm
    from safetensors.torch import save_file

    use_hub_cache(monkeypatch, tmp_path / "hub")
    torch.manual_seed(1)
    save_file(timm.create_model("test_convnext").state_dict(), str(tmp_path / "model.safetensors"))
    fill_hub_cache(tmp_path / "hub", "timm/test_convnext.r160_in1k", {"model.safetensors": tmp_path / "model.safetensors"})
    model, dm, config = build(
        CLASSIFIER[0], "--model.backbone=timm", "--model.backbone.model_name=test_convnext.r160_in1k",
        "--model.backbone.pretrained=true", "--model.backbone.dim=128",
    )
    assert model.backbone.weights_source.startswith("hf-hub:timm/test_convnext.r160_in1k")
    config["model"]["backbone"]["init_args"]["checkpoint"] = str(tmp_path / "model.safetensors")  # as a run may say
    folder = export(model, config, tmp_path / "model")
    assert read_config(folder)["model"]["backbone"]["init_args"]["checkpoint"] is None
    use_hub_cache(monkeypatch, tmp_path / "empty-hub")
    (tmp_path / "model.safetensors").unlink()
    batch = eval_batch(dm)
    pipeline = load_pipeline(folder)
    torch.testing.assert_close(outputs(pipeline, batch)[0], outputs(model, batch)[0], rtol=0, atol=0)
    assert pipeline.backbone.weights_source == f"model folder {folder}"
