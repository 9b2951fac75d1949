"""masked_pass (E-ViLM Fig. 3): the single masked pass feeds mlm, mvm and vtm from one backbone call on the
masked frames and one text-encoder call on the masked words; separate keeps each objective's own pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqa_components import create
from vqa_components.interfaces import ConfigError
from vqa_components.layers.masking import block_mask, mask_pixels
from vqa_components.model import VideoQAModel
from vqa_components.objectives.masked_pass import MaskedInputs
from vqa_components.objectives.mvm import MaskedVideoModeling
from vqa_components.objectives.vg_mlm import IGNORE, mask_texts
from vqa_components.objectives.vtm import swap_sources

D = 32
#: 32 px frames in 8 px patches: the 4 x 4 grid of frame_cnn(grid=4)
TAGGER = {"num_codes": 64, "code_dim": 8, "img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1,
          "num_heads": 2}  # fmt: skip
CAPTIONS = ["a red ball rolls left", "a lamp flashes twice", "a blue cube turns", "a hand opens a door"]
B, T, SEED, MVM_SEED = 4, 2, 7, 3


def _model(masked_pass: str, swap_prob: float = 0.5) -> VideoQAModel:
    torch.manual_seed(0)  # the same weights in both passes
    fusion = {"video_dim": D, "text_dim": D, "dim": D, "num_layers": 1, "num_heads": 2, "max_frames": T,
              "max_tokens_per_frame": 16}  # fmt: skip
    vtm = create("objective", "vtm", in_dim=D, swap_prob=swap_prob)
    model = VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=4),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=create("fusion", "merged_transformer", **fusion),
        head=create("head", "vtm_choice", in_dim=D),
        objectives=[create("objective", "mlm"), vtm, MaskedVideoModeling(tagger=TAGGER)],
        text_field="caption",
        masked_pass=masked_pass,
    )
    model.objectives["mvm"].generator = torch.Generator().manual_seed(MVM_SEED)
    return model


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"video": torch.rand(B, T, 3, 32, 32, generator=g), "caption": list(CAPTIONS)}


def _logged(model: VideoQAModel) -> dict:
    logged = {}
    model.log = lambda key, value, **kwargs: logged.__setitem__(key, value)
    return logged


def _count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda m, args, out: calls.append(1))
    return calls


def _step_in_eval(model: VideoQAModel) -> dict:
    """The objectives' terms of one validation step (eval mode: no dropout, batch norm on its statistics),
    with the global random source at ``SEED`` (BERT's masking, then the swaps, draw from it)."""
    logged = _logged(model.eval())
    torch.manual_seed(SEED)
    with torch.no_grad():
        model.validation_step(_batch(), 0)
    return {k: float(v) for k, v in logged.items()}


def _by_hand(model: VideoQAModel, masked_video: bool, masked_text: bool) -> dict:
    """mlm's and mvm's losses computed here from one fusion of the (masked or not) frames and words."""
    batch, enc = _batch(), model.text_encoder
    torch.manual_seed(SEED)
    tok, ids, labels = mask_texts(enc, CAPTIONS, 0.15)
    mask = block_mask(B, T, (4, 4), 0.4, generator=torch.Generator().manual_seed(MVM_SEED))
    pixels = mask_pixels(batch["video"], mask) if masked_video else batch["video"]
    text = enc(ids, tok["attention_mask"]) if masked_text else enc.encode(CAPTIONS)
    mlm, mvm = model.objectives["mlm"], model.objectives["mvm"]
    with torch.no_grad():
        fused = model.fusion(model.backbone(pixels), text)
        where = labels != IGNORE
        mlm_loss = F.cross_entropy(mlm.head(fused.extras["text_tokens"][where]).float(), labels[where])
        codes = mvm.tagger(batch["video"]).flatten(1)[mask.flatten(1)]
        mvm_loss = F.cross_entropy(mvm.head(fused.extras["video_tokens"][mask.flatten(1)]).float(), codes)
    return {"mlm": float(mlm_loss), "mvm": float(mvm_loss)}


@pytest.mark.parametrize(("masked_pass", "backbone", "text_encoder", "fusion"),
                         [("single", 1, 1, 2), ("separate", 2, 4, 4)])  # fmt: skip
def test_calls_per_training_step(masked_pass, backbone, text_encoder, fusion):
    """single: one backbone and one text-encoder call; the decoder runs on every pair, then on the swapped
    ones. separate: the default forward, mlm's masked text, vtm's swapped texts and mvm's masked frames."""
    model = _model(masked_pass, swap_prob=1.0).train()
    _logged(model)
    calls = {name: _count_calls(getattr(model, name)) for name in ("backbone", "text_encoder", "fusion")}
    loss = model.training_step(_batch(), 0)
    loss.backward()
    assert {k: len(v) for k, v in calls.items()} == {"backbone": backbone, "text_encoder": text_encoder,
                                                     "fusion": fusion}  # fmt: skip


@pytest.mark.parametrize("masked_pass", ["single", "separate"])
def test_mlm_and_mvm_read_the_pass_the_option_names(masked_pass):
    """single: mlm predicts the masked words from the masked frames and mvm the masked cells from the masked
    words, both from one fusion. separate: mlm with the whole video, mvm with the whole text."""
    model = _model(masked_pass)
    terms = _step_in_eval(model)
    single = masked_pass == "single"
    mlm_hand = _by_hand(model, masked_video=single, masked_text=True)["mlm"]
    mvm_hand = _by_hand(model, masked_video=True, masked_text=single)["mvm"]
    assert terms["val/mlm"] == pytest.approx(mlm_hand, rel=1e-5)
    assert terms["val/mvm"] == pytest.approx(mvm_hand, rel=1e-5)
    other_mlm = _by_hand(model, masked_video=not single, masked_text=True)["mlm"]
    assert terms["val/mlm"] != pytest.approx(other_mlm, rel=1e-5)  # (the other video gives another loss)


def test_the_single_pass_s_backbone_sees_the_masked_frames_and_mlm_reads_its_output():
    model = _model("single").train()
    _logged(model)
    pixels, video_tokens, fused_inputs, out_seen = [], [], [], []

    def backbone_hook(module, args, out) -> None:
        pixels.append(args[0])
        video_tokens.append(out.tokens)

    model.backbone.register_forward_hook(backbone_hook)
    model.fusion.register_forward_pre_hook(lambda m, args: fused_inputs.append(args))
    mlm = model.objectives["mlm"]
    forward = mlm.forward

    def mlm_forward(model, batch, out):
        out_seen.append(out)
        return forward(model, batch, out)

    mlm.forward = mlm_forward
    model.training_step(_batch(), 0)
    mask = block_mask(B, T, (4, 4), 0.4, generator=torch.Generator().manual_seed(MVM_SEED))
    assert len(pixels) == 1 and torch.equal(pixels[0], mask_pixels(_batch()["video"], mask))
    out = out_seen[0]
    assert isinstance(out.masked, MaskedInputs) and torch.equal(out.masked.video.mask, mask)
    assert out.video.tokens is video_tokens[0]  # mlm's video is the one (masked) backbone pass
    video, text = fused_inputs[0]
    assert video.tokens is video_tokens[0] and torch.equal(text.input_ids, out.masked.text.input_ids)
    assert (out.masked.text.input_ids == model.text_encoder.mask_token_id).any()


def test_the_losses_differ_between_the_two_passes_on_the_same_batch_and_seed():
    single, separate = _step_in_eval(_model("single")), _step_in_eval(_model("separate"))
    for name in ("val/mlm", "val/vtm", "val/mvm"):  # at the start mlm's loss is log(vocabulary) give or take 1e-4
        assert single[name] != pytest.approx(separate[name], rel=1e-5), name


def test_vtm_s_unmatched_pairs_read_another_row_s_masked_text_in_the_single_pass():
    model = _model("single", swap_prob=1.0).eval()
    _logged(model)
    texts = []
    model.fusion.register_forward_pre_hook(lambda m, args: texts.append(args[1].input_ids))
    torch.manual_seed(SEED)
    with torch.no_grad():
        model.validation_step(_batch(), 0)
    torch.manual_seed(SEED)  # replay: BERT's masking, then the swaps
    mask_texts(model.text_encoder, CAPTIONS, 0.15)
    source = swap_sources(B, 1.0)
    assert sorted(source) == list(range(B)) and all(j != i for i, j in enumerate(source))
    masked_ids, swapped_ids = texts
    assert torch.equal(swapped_ids, masked_ids[source])


def test_unknown_pass_and_multiple_choice_batches_are_config_errors():
    with pytest.raises(ConfigError, match="masked_pass: unknown value 'one'; choose one of separate, single"):
        _model("one")
    model = _model("single")
    _logged(model)
    batch = {**_batch(), "question": ["q"] * B, "options": [["a", "b"]] * B, "answer_idx": torch.zeros(B).long()}
    with pytest.raises(ConfigError, match="multiple-choice options.*use masked_pass: separate"):
        model.training_step(batch, 0)
