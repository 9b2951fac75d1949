"""mlm: BERT's cross-entropy at exactly the masked positions of the merged decoder's text tokens, 80/10/10
masking through the objective, specials never masked, the head built by attach."""

from __future__ import annotations

import math

import pytest
import torch

from vqa_components import create
from vqa_components.interfaces import ConfigError
from vqa_components.model import VideoQAModel
from vqa_components.objectives.mlm import MaskedLanguageModelling
from vqa_components.registry import OBJECTIVES

D = 32
WORDS = "a red ball rolls left over the table while lamp flashes twice near blue cube that turns".split()
CAPTIONS = ["a red ball rolls left", "a lamp flashes twice near the table", "a blue cube turns"]


def _model(objective, fusion: str = "merged_transformer", max_length: int = 32, head: str = "vtm_choice"):
    fusion_args = {"video_dim": D, "text_dim": D, "dim": D, "num_layers": 1, "num_heads": 2}
    model = VideoQAModel(
        backbone=create("backbone", "frame_cnn", dim=D, channels=(8, 16, 32), grid=2),
        text_encoder=create(
            "text_encoder", "small_transformer", dim=D, num_layers=1, num_heads=2, max_length=max_length
        ),
        fusion=create("fusion", fusion, **fusion_args),
        head=create("head", head, in_dim=D),
        objectives=[objective],
        text_field="caption",
    )
    objective.attach(model)  # the model attached it already: a second call must keep the head
    return model


def _setup(mask_prob: float, captions=CAPTIONS, max_length: int = 32):
    torch.manual_seed(0)
    obj = MaskedLanguageModelling(mask_prob=mask_prob)
    model = _model(obj, max_length=max_length).eval()
    batch = {"video": torch.rand(len(captions), 2, 3, 32, 32), "caption": list(captions)}
    return model, obj, batch, model(batch)


def _spy(model, obj):
    """Record the ids the text encoder is called with and the prediction head's input."""
    calls, head_inputs = [], []
    enc = model.text_encoder
    forward = enc.forward

    def recording_forward(input_ids, attention_mask, *args, **kwargs):
        calls.append(input_ids.clone())
        return forward(input_ids, attention_mask, *args, **kwargs)

    enc.forward = recording_forward
    obj.head.register_forward_hook(lambda mod, inp, o: head_inputs.append(inp[0].detach()))
    return calls, head_inputs


def _candidates(enc, texts):
    """Token ids of ``texts`` and where the real, non-special tokens are, from the tokenizer alone."""
    tok = enc.tokenize(texts)
    special = torch.tensor(sorted(set(enc.special_token_ids) | {enc.pad_token_id, enc.mask_token_id}))
    return tok, tok["attention_mask"].bool() & ~torch.isin(tok["input_ids"], special)


def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def head_by_hand(head, h):
    """BERT's prediction head: decoder(LayerNorm(GELU(dense(h))))."""
    x = h @ head.dense.weight.T + head.dense.bias
    x = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    return layer_norm(x, head.norm) @ head.decoder.weight.T + head.decoder.bias


def _decoder_text_tokens(model, out, masked, attention_mask):
    """The merged decoder's outputs at the text positions (after CLS), sliced by hand from ``tokens``."""
    with torch.no_grad():
        fused = model.fusion(out.video, model.text_encoder(masked, attention_mask))
    return fused.tokens[:, 1 : 1 + masked.shape[1]]


def test_registered_and_head_built_by_attach():
    assert OBJECTIVES.get("mlm") is MaskedLanguageModelling
    obj = MaskedLanguageModelling()
    assert obj.head is None
    model = _model(obj)
    head = obj.head
    assert head.dense.in_features == model.fusion.out_dim == D
    assert head.decoder.out_features == model.text_encoder.vocab_size == 49409
    assert head.norm.eps == 1e-12  # BERT's
    obj.attach(model)
    assert obj.head is head  # attaching again keeps the trained head
    assert any(p is head.decoder.weight for p in model.parameters())  # the optimizer sees it
    assert head.decoder.weight.data_ptr() != model.text_encoder.embed.weight.data_ptr()  # untied


def test_explicit_sizes_build_at_once_and_are_checked():
    obj = MaskedLanguageModelling(in_dim=D, vocab_size=49409)
    assert obj.head is not None
    _model(obj)  # matches: fine
    with pytest.raises(ConfigError, match="vocab_size=100 but the text encoder's vocab_size is 49409"):
        _model(MaskedLanguageModelling(in_dim=D, vocab_size=100))
    with pytest.raises(ConfigError, match="in_dim=8 but the fusion's out_dim is 32"):
        _model(MaskedLanguageModelling(in_dim=8))
    with pytest.raises(ConfigError, match="mask_prob"):
        MaskedLanguageModelling(mask_prob=0.0)


def test_unattached_objective_and_fusion_without_text_tokens_raise():
    torch.manual_seed(0)
    obj = MaskedLanguageModelling()
    batch = {"video": torch.rand(3, 2, 3, 32, 32), "caption": CAPTIONS}
    model = _model(obj)
    obj.head = None
    with pytest.raises(ConfigError, match="attach"):
        obj(model, batch, model(batch))
    other = MaskedLanguageModelling()
    model = _model(other, fusion="cross_attention")
    with pytest.raises(ConfigError, match="CrossAttentionFusion gives no extras\\['text_tokens'\\]"):
        other(model, batch, model(batch))


def test_loss_is_the_cross_entropy_of_the_head_at_exactly_the_masked_positions():
    """mask_prob=1: every real, non-special token is masked; the expectation comes from the tokenizer, the
    recorded ids, the decoder's tokens sliced by hand and the head written out, not from the objective."""
    model, obj, batch, out = _setup(mask_prob=1.0)
    calls, head_inputs = _spy(model, obj)
    res = obj(model, batch, out)
    tok, cand = _candidates(model.text_encoder, CAPTIONS)
    assert len(calls) == 1  # one masked pass
    masked = calls[0]
    assert torch.equal(masked[~cand], tok["input_ids"][~cand])  # specials and padding untouched
    assert (masked[cand] == model.text_encoder.mask_token_id).float().mean() > 0.5  # the encoder saw [MASK]s
    words = _decoder_text_tokens(model, out, masked, tok["attention_mask"])
    torch.testing.assert_close(head_inputs[0], words[cand])  # the head reads h^L at the masked positions
    with torch.no_grad():
        logits = head_by_hand(obj.head, words[cand])
    targets = tok["input_ids"][cand]  # the original words
    nll = torch.logsumexp(logits, -1) - logits[torch.arange(len(targets)), targets]
    torch.testing.assert_close(res["loss"].detach(), nll.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res["acc"], (logits.argmax(-1) == targets).float().mean())


def test_at_mask_prob_one_half_only_the_chosen_positions_count():
    """The head's rows are matched to decoder positions: a set that holds every changed token, only
    candidates, and the loss is the cross-entropy of the original words there."""
    model, obj, batch, out = _setup(mask_prob=0.5)
    calls, head_inputs = _spy(model, obj)
    res = obj(model, batch, out)
    tok, cand = _candidates(model.text_encoder, CAPTIONS)
    masked = calls[0]
    words = _decoder_text_tokens(model, out, masked, tok["attention_mask"])
    rows = head_inputs[0]
    dist = (rows[:, None, None] - words[None]).abs().amax(-1)  # (rows, b, l)
    chosen = torch.zeros_like(cand)
    for r in range(len(rows)):
        i, j = divmod(int(dist[r].argmin()), words.shape[1])
        assert dist[r, i, j] < 1e-5
        chosen[i, j] = True
    assert int(chosen.sum()) == len(rows) < int(cand.sum())  # distinct positions, not every candidate
    assert not (chosen & ~cand).any()
    assert not ((masked != tok["input_ids"]) & ~chosen).any()  # every changed token is a target
    with torch.no_grad():
        logits = head_by_hand(obj.head, words[chosen])
    targets = tok["input_ids"][chosen]
    nll = torch.logsumexp(logits, -1) - logits[torch.arange(len(targets)), targets]
    torch.testing.assert_close(res["loss"].detach(), nll.mean(), atol=1e-5, rtol=1e-5)


def test_masking_statistics_over_many_draws_are_berts():
    """15% chosen (+-0.012), of which 80% [MASK] (+-0.03), 10% a random word (+-0.025), 10% kept (+-0.025):
    over about 20 000 candidates, 4 to 5 standard deviations."""
    g = torch.Generator().manual_seed(0)
    captions = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (30,), generator=g)) for _ in range(16)]
    model, obj, batch, out = _setup(mask_prob=0.15, captions=captions, max_length=40)
    calls, head_inputs = _spy(model, obj)
    enc = model.text_encoder
    tok, cand = _candidates(enc, captions)
    ids = tok["input_ids"]
    special = torch.tensor(sorted(set(enc.special_token_ids) | {enc.pad_token_id, enc.mask_token_id}))
    draws, total = 40, {"chosen": 0, "mask": 0, "random": 0}
    with torch.no_grad():
        for _ in range(draws):
            obj(model, batch, out)
    assert len(calls) == draws
    for masked, rows in zip(calls, head_inputs):
        assert torch.equal(masked[~cand], ids[~cand])  # specials and padding never masked
        replaced = cand & (masked != ids) & (masked != enc.mask_token_id)
        assert not torch.isin(masked[replaced], special).any()  # random words are never special ids
        total["chosen"] += len(rows)
        total["mask"] += int((masked[cand] == enc.mask_token_id).sum())
        total["random"] += int(replaced.sum())
    candidates = draws * int(cand.sum())
    assert candidates > 18000
    chosen = total["chosen"]
    assert chosen / candidates == pytest.approx(0.15, abs=0.012)
    assert total["mask"] / chosen == pytest.approx(0.8, abs=0.03)
    assert total["random"] / chosen == pytest.approx(0.1, abs=0.025)
    assert (chosen - total["mask"] - total["random"]) / chosen == pytest.approx(0.1, abs=0.025)


def test_gradients_reach_head_decoder_text_encoder_and_backbone():
    torch.manual_seed(0)
    obj = MaskedLanguageModelling(mask_prob=0.5)
    model = _model(obj)
    batch = {"video": torch.rand(3, 2, 3, 32, 32), "caption": CAPTIONS}
    obj(model, batch, model(batch))["loss"].backward()
    for part in (obj.head, model.fusion, model.text_encoder, model.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part)


def test_multiple_choice_forward_masks_the_correct_pairs_only():
    torch.manual_seed(0)
    obj = MaskedLanguageModelling(mask_prob=1.0)
    model = _model(obj).eval()
    batch = {
        "video": torch.rand(3, 2, 3, 32, 32),
        "question": ["what moves?", "what color?", "how many?"],
        "options": [["a ball", "a lamp"], ["red", "blue"], ["one", "two"]],
        "answer_idx": torch.tensor([1, -1, 0]),
    }
    out = model(batch)
    calls, _ = _spy(model, obj)
    seen = []
    model.fusion.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    res = obj(model, batch, out)
    tok, cand = _candidates(model.text_encoder, ["what moves? a lamp", "how many? one"])
    assert calls[0].shape == tok["input_ids"].shape and torch.equal(calls[0][~cand], tok["input_ids"][~cand])
    assert torch.equal(seen[0].tokens, out.video.tokens[[1, 4]])  # the videos of those two pairs
    assert torch.isfinite(res["loss"])
