"""open_clip text tower encoder: tokenizer, mask, EOT pooling, mask token, weight loading."""

from __future__ import annotations

import open_clip
import pytest
import torch

from vqa_components.layers.open_clip import build_open_clip_model
from vqa_components.registry import TEXT_ENCODERS
from vqa_components.text.open_clip import (
    EOT_TOKEN_ID,
    MASK_TOKEN_ID,
    SOT_TOKEN_ID,
    OpenClipTextEncoder,
)

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXTS = ["a dog runs", "what is the man holding in his left hand?"]


def tiny(**kw) -> OpenClipTextEncoder:
    torch.manual_seed(0)
    return OpenClipTextEncoder("tiny", model_config=TINY, **kw)


def test_registered_and_attributes():
    assert TEXT_ENCODERS.get("open_clip") is OpenClipTextEncoder
    enc = tiny()
    assert enc.out_dim == 32 and enc.vocab_size == 49409
    assert enc.pad_token_id == 0 and enc.mask_token_id == MASK_TOKEN_ID == 49408
    assert set(enc.special_token_ids) == {SOT_TOKEN_ID, EOT_TOKEN_ID, 0, MASK_TOKEN_ID}
    assert enc.token_embedding.num_embeddings == 49409
    torch.testing.assert_close(enc.token_embedding.weight[MASK_TOKEN_ID], enc.token_embedding.weight[:-1].mean(0))


def test_clip_bpe_ships_offline():
    tok = open_clip.get_tokenizer("ViT-B-16")
    ids = tok(["a dog"])[0]
    assert ids[0] == SOT_TOKEN_ID and EOT_TOKEN_ID in ids.tolist()


def test_shapes_mask_and_eot_cls():
    enc = tiny()
    tok = enc.tokenize(TEXTS)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    assert mask.dtype == torch.bool and ids.shape == mask.shape
    assert ids.shape[1] == int(mask.sum(1).max())  # trimmed to the longest text
    for row_ids, row_mask in zip(ids, mask):
        n = int(row_mask.sum())
        assert row_ids[0] == SOT_TOKEN_ID and row_ids[n - 1] == EOT_TOKEN_ID
        assert row_mask[:n].all() and not row_mask[n:].any() and (row_ids[n:] == 0).all()
    out = enc(ids, mask)
    assert out.tokens.shape == (2, ids.shape[1], 32) and out.cls.shape == (2, 32)
    eot = mask.sum(1) - 1
    torch.testing.assert_close(out.cls, out.tokens[torch.arange(2), eot])


def test_matches_open_clip_encode_text():
    """Word tokens are CLIP's per-position features; cls equals encode_text (full 16-token context)."""
    torch.manual_seed(3)
    model = build_open_clip_model("tiny", TINY).eval()
    enc = tiny()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("visual.", "logit_"))}
    emb = state["token_embedding.weight"]
    state["token_embedding.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])
    enc.load_state_dict(state)
    full = enc.tokenizer(TEXTS)
    ref = model.encode_text(full)
    tok = enc.tokenize(TEXTS)
    out = enc(tok["input_ids"], tok["attention_mask"])  # trimmed: same result, the tower is causal
    torch.testing.assert_close(out.cls, ref, rtol=1e-5, atol=1e-5)


def test_mask_token_does_not_move_the_sentence_position():
    enc = tiny()
    tok = enc.tokenize(TEXTS)
    ids = tok["input_ids"].clone()
    ids[:, 1] = MASK_TOKEN_ID  # larger than EOT: CLIP's argmax pooling would pick it
    out = enc(ids, tok["attention_mask"])
    eot = tok["attention_mask"].sum(1) - 1
    torch.testing.assert_close(out.cls, out.tokens[torch.arange(2), eot])


def test_trainable_by_default_and_frozen_option():
    enc = tiny()
    enc.encode(TEXTS).cls.sum().backward()
    assert enc.token_embedding.weight.grad is not None
    frozen = tiny(frozen=True)
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("layout", ["full_clip", "text_only", "own_part"])
def test_checkpoint_round_trip(tmp_path, layout):
    torch.manual_seed(7)
    model = build_open_clip_model("tiny", TINY)
    path = tmp_path / "w.pt"
    if layout == "full_clip":
        torch.save(model.state_dict(), path)
    elif layout == "text_only":
        torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}, path)
    else:
        torch.save(tiny().state_dict(), path)
    loaded = tiny(checkpoint=str(path))
    if layout == "own_part":
        ref = tiny()
    else:
        ref = OpenClipTextEncoder("tiny", model_config=TINY)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith(("visual.", "logit_"))}
        emb = state["token_embedding.weight"]
        state["token_embedding.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])
        ref.load_state_dict(state)
    a, b = loaded.encode(TEXTS), ref.encode(TEXTS)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.cls, b.cls)
    assert loaded.weights_source == str(path) and tiny().weights_source is None


def test_wrong_checkpoint_error(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"token_embedding.weight": torch.zeros(49408, 64), "bogus": torch.zeros(2)}, bad)
    with pytest.raises(ValueError) as err:
        tiny(checkpoint=str(bad))
    assert str(bad) in str(err.value) and "missing keys" in str(err.value) and "bogus" in str(err.value)


def test_unsupported_tower_rejected():
    with pytest.raises(ValueError, match="CLIP"):
        OpenClipTextEncoder("coca_base", model_config={
            "embed_dim": 32,
            "vision_cfg": TINY["vision_cfg"],
            "text_cfg": {**TINY["text_cfg"], "embed_cls": True},
            "custom_text": True,
        })
