"""captioning: teacher-forced caption tokens from the video and a prefix, with the backbone run once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqa_components import create
from vqa_components.interfaces import ConfigError
from vqa_components.model import VideoQAModel

D = 16
T5 = {"d_model": D, "num_layers": 1, "num_heads": 2, "d_kv": 8, "d_ff": 32, "dropout_rate": 0.0}


def model(minilm_folder, head=None, **objective_args) -> VideoQAModel:
    torch.manual_seed(0)
    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2, dropout=0.0),
        fusion=create("fusion", "cross_attention", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2),
        head=head or create("head", "text_decoder", in_dim=D, config=T5, tokenizer_path=str(minilm_folder)),
        objectives=[create("objective", "captioning", **objective_args)],
    ).eval()


BATCH = {
    "video": torch.rand(2, 3, 3, 32, 32),
    "question": ["what color is the ball?", "how many flashes?"],
    "caption": ["a red ball moves left", "a lamp flashes twice"],
    "prompt": ["describe:", "summarise:"],
}


def _decoder_ce(m: VideoQAModel, video, prefixes, captions) -> torch.Tensor:
    """The token cross-entropy written out: fusion with the prefix, decoder on the captions shifted right."""
    text = m.text_encoder.encode(prefixes)
    fused = m.fusion(video, text)
    labels = m.head.target_ids(captions)
    start = torch.zeros_like(labels[:, :1])
    decoder_in = torch.cat([start, labels[:, :-1].clamp(min=0)], 1)  # -100 padding reads as the pad id 0
    mask = None if fused.mask is None else fused.mask.long()  # padding of the fused tokens is not attended
    logits = m.head.t5(encoder_outputs=(m.head.proj(fused.tokens),), attention_mask=mask, decoder_input_ids=decoder_in).logits
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def test_loss_is_the_caption_token_cross_entropy_given_an_empty_prefix(minilm_folder):
    m = model(minilm_folder)
    calls = []
    m.backbone.register_forward_hook(lambda *a: calls.append(1))
    out = m(BATCH)
    loss = m.objectives[0](m, BATCH, out)["loss"]
    assert len(calls) == 1  # the clip is encoded once: the objective reuses the default forward's features
    expected = _decoder_ce(m, out.video, ["", ""], BATCH["caption"])
    assert torch.allclose(loss, expected, atol=1e-5)
    # not the question: the default forward's text is not what the decoder is conditioned on here
    assert not torch.allclose(loss, _decoder_ce(m, out.video, BATCH["question"], BATCH["caption"]), atol=1e-4)


def test_a_captioning_step_runs_the_backbone_and_the_objective_s_own_pass_only(minilm_folder):
    """The model's forward reads only the video features for captioning: the question goes through no
    text encoder, fusion or decoder that the objective would throw away; the loss is unchanged."""
    m = model(minilm_folder)
    calls = {name: 0 for name in ("backbone", "text_encoder", "fusion", "head")}
    for name in calls:
        getattr(m, name).register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    out = m.objectives.model_output(m, BATCH)
    assert out.text is None and out.fused is None and out.head is None
    assert calls == {"backbone": 1, "text_encoder": 0, "fusion": 0, "head": 0}
    loss = m.loss(BATCH, out, "train")
    assert calls == {"backbone": 1, "text_encoder": 1, "fusion": 1, "head": 1}  # the prefix's pass, once
    torch.testing.assert_close(loss, m.objectives[0](m, BATCH, m(BATCH))["loss"])
    # with an objective that reads the fused output too, the full forward runs as before
    both = model(minilm_folder)
    both.objectives = type(both.objectives).of([both.objectives[0], create("objective", "answer_cross_entropy")])
    assert both.objectives.model_output(both, {**BATCH, "answer": ["red", "two"]}).head is not None


def test_prefix_field_conditions_the_decoder(minilm_folder):
    m = model(minilm_folder, prefix_field="prompt")
    out = m(BATCH)
    loss = m.objectives[0](m, BATCH, out)["loss"]
    assert torch.allclose(loss, _decoder_ce(m, out.video, BATCH["prompt"], BATCH["caption"]), atol=1e-5)


def test_needs_a_generating_head_and_its_fields(minilm_folder):
    m = model(minilm_folder, head=create("head", "answer_classifier", in_dim=D, num_answers=3))
    with pytest.raises(ConfigError, match="needs a generating head"):
        m.objectives[0](m, BATCH, m(BATCH))
    m = model(minilm_folder, target_field="transcript")
    with pytest.raises(KeyError, match="no 'transcript' field"):
        m.objectives[0](m, BATCH, m(BATCH))
