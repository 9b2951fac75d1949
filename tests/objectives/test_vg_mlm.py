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


def _setup(mask_prob: float = 0.15):
    torch.manual_seed(0)
    enc = create("text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2)
    obj = VisionGuidedMLM(video_dim=D, text_dim=D, vocab_size=enc.vocab_size, hidden_dim=16, mask_prob=mask_prob)
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
    res["loss"].backward()
    assert v_cls.grad is not None and (v_cls.grad.abs().sum(-1) > 0).all()  # every sample guides its words
    assert all(p.grad is None for p in model.text_encoder.parameters())  # nothing through w^M
    assert all(p.grad is not None for p in obj.mlp.parameters())


def test_loss_trains_fusion_through_v_cls():
    model, obj, out = _setup()
    obj(model, BATCH, out)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())


def _candidates(enc, texts):
    """Token ids of ``texts`` and where the real, non-special tokens are, from the tokenizer alone."""
    tok = enc.tokenize(texts)
    special = torch.tensor(sorted(set(enc.special_token_ids) | {enc.pad_token_id, enc.mask_token_id}))
    return tok, tok["attention_mask"].bool() & ~torch.isin(tok["input_ids"], special)


def _spy(model, obj):
    """Record the ids the text encoder is called with, and the MLP's input and output."""
    calls, mlp_io = [], []
    enc = model.text_encoder
    forward = enc.forward

    def recording_forward(input_ids, attention_mask, *args, **kwargs):
        calls.append(input_ids.clone())
        return forward(input_ids, attention_mask, *args, **kwargs)

    enc.forward = recording_forward
    obj.mlp.register_forward_hook(lambda mod, inp, o: mlp_io.append((inp[0].detach(), o.detach())))
    return calls, mlp_io


def test_every_word_is_a_target_at_mask_prob_1_and_the_mlp_reads_the_masked_pass():
    """Expectations built from the tokenizer and the recorded calls, not by re-running the masking."""
    model, obj, out = _setup(mask_prob=1.0)
    calls, mlp_io = _spy(model, obj)
    obj(model, BATCH, out)
    tok, cand = _candidates(model.text_encoder, BATCH["caption"])
    ids = tok["input_ids"]
    assert len(calls) == 1  # one masked pass
    masked = calls[0]
    assert torch.equal(masked[~cand], ids[~cand])  # specials and padding untouched
    changed = cand & (masked != ids)
    mask_id = model.text_encoder.mask_token_id
    assert (masked[cand] == mask_id).float().mean() > 0.5  # most chosen words become [MASK] (80 %)
    assert changed.any()
    x, _ = mlp_io[0]
    assert x.shape == (int(cand.sum()), 2 * D)  # one MLP row per word: every word is a target
    with torch.no_grad():
        words = model.text_encoder(masked, tok["attention_mask"]).tokens[cand]
    torch.testing.assert_close(x[:, :D], words)  # SG(w^M): features of the masked pass
    sample = cand.nonzero()[:, 0]
    torch.testing.assert_close(x[:, D:], out.fused.pooled.detach()[sample])  # the sample's v_cls*


def test_loss_is_the_cross_entropy_of_the_mlp_at_the_masked_positions():
    """Eq. (9) by hand: MLP = Linear -> GELU -> LayerNorm -> Linear applied to the recorded input,
    loss = mean over masked words of logsumexp(logits) - logits[original word]."""
    model, obj, out = _setup(mask_prob=1.0)
    _, mlp_io = _spy(model, obj)
    res = obj(model, BATCH, out)
    tok, cand = _candidates(model.text_encoder, BATCH["caption"])
    targets = tok["input_ids"][cand]  # the original words, in reading order
    x, logits_seen = mlp_io[0]
    lin1, _, norm, lin2 = obj.mlp
    h = x @ lin1.weight.T + lin1.bias
    h = 0.5 * h * (1 + torch.erf(h / 2**0.5))  # GELU
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + norm.eps)
    h = h * norm.weight + norm.bias
    logits = (h @ lin2.weight.T + lin2.bias).detach()
    torch.testing.assert_close(logits, logits_seen, atol=1e-5, rtol=1e-5)
    nll = torch.logsumexp(logits, -1) - logits[torch.arange(len(targets)), targets]
    torch.testing.assert_close(res["loss"].detach(), nll.mean(), atol=1e-5, rtol=1e-5)
    acc = (logits.argmax(-1) == targets).float().mean()
    torch.testing.assert_close(res["acc"], acc)
    assert res["loss"] > 0
