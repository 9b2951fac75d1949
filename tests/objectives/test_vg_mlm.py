"""VG-MLM: BERT masking statistics, stop-gradient on w^M, v_cls* guidance, vocabulary checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vqa_components import create
from vqa_components.model import VideoQAModel
from vqa_components.objectives.vg_mlm import VisionGuidedMLM, bert_mask
from vqa_components.registry import OBJECTIVES

D = 32
SPECIAL = (0, 1, 2)  # pad, start, end
MASK_ID, VOCAB = 3, 1000


def _ids(b: int, length: int, real: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` sequences ``<start> w... <end> <pad>...`` with ``real`` tokens (start and end included)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, length), generator=g)
    ids[:, 0] = 1
    ids[:, real - 1] = 2
    ids[:, real:] = 0
    mask = torch.arange(length)[None].expand(b, length) < real
    return ids, mask


def test_bert_mask_statistics_and_specials():
    ids, mask = _ids(400, 70, 60)
    g = torch.Generator().manual_seed(0)
    masked, labels = bert_mask(ids, mask, MASK_ID, VOCAB, SPECIAL, 0.15, generator=g)
    chosen = labels != -100
    candidates = mask & (ids > 3)
    assert not (chosen & ~candidates).any()  # pad, start, end never chosen
    torch.testing.assert_close(masked[~chosen], ids[~chosen], rtol=0, atol=0)  # untouched elsewhere
    torch.testing.assert_close(labels[chosen], ids[chosen], rtol=0, atol=0)  # targets are the originals
    assert chosen.sum() / candidates.sum() == pytest.approx(0.15, abs=0.01)
    n = chosen.sum().item()
    to_mask = (masked[chosen] == MASK_ID).sum().item() / n
    same = (masked[chosen] == ids[chosen]).sum().item() / n
    random = 1 - to_mask - same
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert random == pytest.approx(0.1, abs=0.015)
    assert same == pytest.approx(0.1, abs=0.015)
    replaced = masked[chosen & (masked != MASK_ID) & (masked != ids)]
    assert ((replaced > 3) & (replaced < VOCAB)).all()  # random replacements are never special ids


def test_bert_mask_is_reproducible_with_a_generator():
    ids, mask = _ids(8, 20, 15)
    a = bert_mask(ids, mask, MASK_ID, VOCAB, SPECIAL, 0.15, generator=torch.Generator().manual_seed(3))
    b = bert_mask(ids, mask, MASK_ID, VOCAB, SPECIAL, 0.15, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bert_mask_chooses_at_least_one_token_per_sentence():
    ids, mask = _ids(200, 6, 4)  # two maskable words per sentence: most would get none at 15%
    ids[0, 1:3] = 0  # a sentence made only of special tokens
    g = torch.Generator().manual_seed(1)
    _, labels = bert_mask(ids, mask, MASK_ID, VOCAB, SPECIAL, 0.15, generator=g)
    per_row = (labels != -100).sum(-1)
    assert per_row[0] == 0
    assert (per_row[1:] >= 1).all()
    assert per_row[1:].float().mean() < 1.3  # the fallback adds one, not many


def _model(objective) -> VideoQAModel:
    return VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=2),
        text_encoder=create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2),
        fusion=create("fusion", "cross_attention", video_dim=D, text_dim=D, dim=D, num_layers=1, num_heads=2),
        head=create("head", "vtm_choice", in_dim=D),
        objectives=[objective],
        text_field="caption",
    )


BATCH = {
    "video": torch.rand(3, 2, 3, 32, 32),
    "caption": ["a red ball rolls left", "a lamp flashes", "a cube"],
}


def _setup():
    torch.manual_seed(0)
    enc = create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2)
    obj = VisionGuidedMLM(video_dim=D, text_dim=D, vocab_size=enc.vocab_size, hidden_dim=16)
    model = _model(obj)
    return model, obj, model(BATCH)


def test_registered_and_requires_matching_vocab():
    assert OBJECTIVES.get("vg_mlm") is VisionGuidedMLM
    with pytest.raises(ValueError, match="vocab_size"):
        VisionGuidedMLM(video_dim=D, text_dim=D, vocab_size=None)
    obj = VisionGuidedMLM(video_dim=D, text_dim=D, vocab_size=100)
    model = _model(obj)
    with pytest.raises(ValueError, match="vocab_size=100 but the text encoder"):
        obj(model, BATCH, model(BATCH))


def test_stop_gradient_on_masked_words_but_not_on_v_cls():
    model, obj, out = _setup()
    v_cls = out.fused.pooled.detach().clone().requires_grad_(True)
    res = obj(model, BATCH, replace(out, fused=replace(out.fused, pooled=v_cls)))
    assert torch.isfinite(res["loss"]) and 0 <= res["acc"] <= 1
    res["loss"].backward()
    assert v_cls.grad is not None and (v_cls.grad.abs().sum(-1) > 0).all()  # every sample guides its words
    assert all(p.grad is None for p in model.text_encoder.parameters())  # nothing through w^M
    assert all(p.grad is not None for p in obj.mlp.parameters())


def test_loss_trains_fusion_through_v_cls():
    model, obj, out = _setup()
    obj(model, BATCH, out)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())


def test_mlp_input_is_masked_word_features_and_the_sample_v_cls():
    model, obj, out = _setup()
    seen = []
    obj.mlp.register_forward_hook(lambda mod, inp, o: seen.append(inp[0].detach()))
    torch.manual_seed(5)
    obj(model, BATCH, out)
    enc = model.text_encoder
    tok = enc.tokenize(BATCH["caption"])
    torch.manual_seed(5)  # same random draws as inside the objective
    masked, labels = bert_mask(
        tok["input_ids"],
        tok["attention_mask"],
        enc.mask_token_id,
        enc.vocab_size,
        enc.special_token_ids,
        0.15,
    )
    where = labels != -100
    with torch.no_grad():
        words = enc(masked, tok["attention_mask"]).tokens[where]
    sample = where.nonzero()[:, 0]
    assert set(sample.tolist()) == {0, 1, 2}
    x = seen[0]
    assert x.shape == (int(where.sum()), 2 * D)
    torch.testing.assert_close(x[:, :D], words)  # [SG(w^M); v_cls*]
    torch.testing.assert_close(x[:, D:], out.fused.pooled.detach()[sample])
