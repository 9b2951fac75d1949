"""t5 text encoder: random build from a T5 config, values equal a direct T5EncoderModel call, save/reload through
the hf_transformer loading path (weights_source), the real WordPiece vocabulary, freezing, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqa_components.registry import TEXT_ENCODERS, create
from vqa_components.text.t5 import T5TextEncoder

TEXTS = ["what is the man holding?", "a dog runs across the park"]
TINY_T5 = {"d_model": 32, "num_layers": 2, "num_heads": 2, "d_kv": 16, "d_ff": 64, "dropout_rate": 0.0}
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "what",
    "is",
    "the",
    "man",
    "holding",
    "?",
    "a",
    "dog",
    "runs",
    "across",
    "park",
    "##s",
]


@pytest.fixture
def vocab_file(tmp_path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def direct(enc: T5TextEncoder):
    """A T5EncoderModel built by hand from the encoder's config, holding a copy of its weights."""
    from transformers import T5Config, T5EncoderModel

    ref = T5EncoderModel(T5Config(**enc.model.config.to_dict())).eval()
    ref.load_state_dict(enc.model.state_dict())
    return ref


def test_registered():
    assert TEXT_ENCODERS.get("t5") is T5TextEncoder


def test_random_build_equals_a_direct_t5_encoder_call(vocab_file):
    torch.manual_seed(0)
    enc = create("text_encoder", "t5", config=TINY_T5, tokenizer_path=str(vocab_file), max_length=16)
    assert enc.weights_source is None  # random: nothing was loaded
    assert enc.out_dim == 32 and enc.vocab_size == len(VOCAB) and enc.model.config.vocab_size == len(VOCAB)
    assert enc.pad_token_id == 0 and enc.model.config.pad_token_id == 0
    assert enc.mask_token_id == VOCAB.index("[MASK]") and {0, 2, 3, 4} <= set(enc.special_token_ids)
    assert enc.model.config.num_layers == 2 and len(enc.model.encoder.block) == 2
    tok = enc.tokenize(TEXTS)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    assert mask.dtype == torch.bool and ids.shape == mask.shape and (ids[~mask] == 0).all()
    assert ids[0, 1:6].tolist() == [VOCAB.index(w) for w in ("what", "is", "the", "man", "holding")]
    out = enc(ids, mask)
    expected = direct(enc)(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(out.tokens, expected, rtol=0, atol=0)
    w = mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.cls, (expected * w).sum(1) / w.sum(1))  # T5 has no CLS: masked mean
    assert torch.equal(out.input_ids, ids) and torch.equal(out.mask, mask)
    torch.manual_seed(1)
    other = T5TextEncoder(config=TINY_T5, tokenizer_path=str(vocab_file))
    assert not torch.allclose(other.encode(TEXTS).cls, out.cls)  # really random


def test_config_vocab_size_and_defaults(vocab_file):
    enc = T5TextEncoder(config={**TINY_T5, "vocab_size": 64}, tokenizer_path=str(vocab_file))
    assert enc.vocab_size == 64  # a larger table than the tokenizer is allowed
    with pytest.raises(ValueError, match="vocab_size=3 is smaller"):
        T5TextEncoder(config={**TINY_T5, "vocab_size": 3}, tokenizer_path=str(vocab_file))


def test_saved_folder_reloads_with_identical_outputs(vocab_file, tmp_path):
    torch.manual_seed(0)
    enc = T5TextEncoder(config=TINY_T5, tokenizer_path=str(vocab_file), max_length=16)
    before = enc.encode(TEXTS)
    folder = enc.save_pretrained(tmp_path / "t5_folder")
    assert (folder / "config.json").is_file()
    again = T5TextEncoder(pretrained_path=str(folder), max_length=16)
    assert again.weights_source == str(folder)  # a frozen copy of it counts as pretrained
    assert again.vocab_size == enc.vocab_size and again.mask_token_id == enc.mask_token_id
    after = again.encode(TEXTS)
    assert torch.equal(after.tokens, before.tokens) and torch.equal(after.cls, before.cls)
    assert torch.equal(after.input_ids, before.input_ids)


def test_full_t5_folder_loads_its_encoder(vocab_file, tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from vqa_components.tokenizers import load_tokenizer

    torch.manual_seed(0)
    full = T5ForConditionalGeneration(T5Config(vocab_size=len(VOCAB), pad_token_id=0, **TINY_T5)).eval()
    folder = tmp_path / "full_t5"
    full.save_pretrained(str(folder))
    load_tokenizer(vocab_file).save_pretrained(str(folder))
    enc = T5TextEncoder(pretrained_path=str(folder))
    tok = enc.tokenize(TEXTS)
    expected = full.encoder(
        input_ids=tok["input_ids"], attention_mask=tok["attention_mask"].long()
    ).last_hidden_state
    assert torch.equal(enc(tok["input_ids"], tok["attention_mask"]).tokens, expected)


def test_real_wordpiece_vocabulary(minilm_folder):
    enc = T5TextEncoder(config=TINY_T5, tokenizer_path=str(minilm_folder / "vocab.txt"))
    assert enc.vocab_size == 30522 and enc.pad_token_id == 0 and enc.mask_token_id == 103
    out = enc.encode(["a man is playing a guitar", "hi"])
    assert out.tokens.shape[:2] == out.mask.shape and out.mask[1].sum() < out.mask[0].sum()


def test_trainable_by_default_frozen_stays_frozen(vocab_file):
    enc = T5TextEncoder(config=TINY_T5, tokenizer_path=str(vocab_file))
    enc.train()
    assert enc.training
    enc.encode(TEXTS).cls.sum().backward()
    assert enc.model.shared.weight.grad is not None
    frozen = T5TextEncoder(config=TINY_T5, tokenizer_path=str(vocab_file), frozen=True)
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_bad_paths_give_one_clear_error(tmp_path, vocab_file, monkeypatch):
    from helpers import use_hub_cache

    from vqa_components.interfaces import ConfigError

    use_hub_cache(monkeypatch, tmp_path / "hub")  # a hub id: read through an empty cache, offline
    with pytest.raises(ConfigError, match="t5: pretrained_path 't5-small' is not in the Hugging Face cache"):
        T5TextEncoder(pretrained_path="t5-small")
    with pytest.raises(FileNotFoundError, match="t5: tokenizer_path .* is not a local path"):
        T5TextEncoder(config=TINY_T5, tokenizer_path=str(tmp_path / "missing_vocab.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="not a model folder.*config.json.*save_pretrained"):
        T5TextEncoder(pretrained_path=str(empty))
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a model folder.*model.safetensors"):
        T5TextEncoder(pretrained_path=str(empty))
    with pytest.raises(FileNotFoundError, match="is a file"):
        T5TextEncoder(pretrained_path=str(vocab_file))
    with pytest.raises(ValueError, match="tokenizer_path"):
        T5TextEncoder(config=TINY_T5)
    with pytest.raises(ValueError, match="t5 needs pretrained_path"):
        T5TextEncoder()
    with pytest.raises(ValueError, match="t5: give pretrained_path .* or config .*, not both"):
        T5TextEncoder(pretrained_path="t5-base", config=TINY_T5)  # no silent choice of one


def test_clip_bpe_vocabulary_of_open_clip(tmp_path):
    """``tokenizer_path: clip_bpe``: CLIP's BPE vocabulary (shipped with open_clip), as the text_decoder head takes it."""
    from vqa_components.tokenizers import ClipBPETokenizer

    torch.manual_seed(0)
    enc = T5TextEncoder(config=TINY_T5, tokenizer_path="clip_bpe", max_length=8)
    ref = ClipBPETokenizer(context_length=8)
    assert enc.vocab_size == ref.vocab_size == 49409 and enc.pad_token_id == 0
    assert enc.mask_token_id == ref.mask_token_id and set(enc.special_token_ids) == set(ref.special_token_ids)
    texts = ["what is the man holding?", "a dog runs across the park and jumps over the fence"]
    tok = enc.tokenize(texts)
    expected = ref(texts)
    assert torch.equal(tok["input_ids"], expected["input_ids"]) and torch.equal(tok["attention_mask"], expected["attention_mask"])
    assert tok["input_ids"].shape[1] == 8 and tok["input_ids"][0, 0] == ref.sot_token_id  # cut at max_length
    out = enc.encode(texts)
    assert torch.equal(out.tokens, direct(enc)(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"].long()).last_hidden_state)
    folder = enc.save_pretrained(tmp_path / "t5_clip")  # the vocabulary ships with open_clip: not written
    again = T5TextEncoder(pretrained_path=str(folder), tokenizer_path="clip_bpe", max_length=8)
    assert again.weights_source == str(folder) and torch.equal(again.encode(texts).tokens, out.tokens)
    with pytest.raises(ValueError, match="vocab_size=100 is smaller"):
        T5TextEncoder(config={**TINY_T5, "vocab_size": 100}, tokenizer_path="clip_bpe")


# ------------------------------------------------ T5's own SentencePiece vocabulary (the cotok recipes')
#: a tiny T5 of the hub's layout: T5's special ids (padding 0, end 1; the decoder starts from padding)
TINY_T5_REPO = {**TINY_T5, "num_layers": 1, "num_decoder_layers": 1, "pad_token_id": 0, "eos_token_id": 1,
                "decoder_start_token_id": 0}  # fmt: skip
ANSWERS = ["red", "two cats", "left", "the blue square"]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> Path:
    from helpers import sentencepiece_model

    return sentencepiece_model(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def t5_hub(tmp_path_factory, spiece) -> Path:
    """A hub cache holding, as ``t5-base``, a tiny random T5 with the tokenizer files made from ``spiece``."""
    from helpers import t5_repository

    cache = tmp_path_factory.mktemp("hub")
    t5_repository(cache, "t5-base", spiece, {**TINY_T5_REPO, "vocab_size": 320 + 100})
    return cache


def sentencepiece_ids(spiece: Path, texts: list[str]) -> list[list[int]]:
    """What the SentencePiece model itself makes of ``texts``, closed with T5's end id (1)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    return [sp.encode(t) + [1] for t in texts]


def test_t5s_sentencepiece_model_is_read_as_t5_reads_it(spiece, tmp_path):
    """A bare ``spiece.model`` (the file, or a folder holding only it) gives T5's tokenizer: the model's
    own ids, then the 100 sentinels, ``</s>`` closing each text; ``save_pretrained`` keeps it."""
    import sentencepiece as spm

    from vqa_components.tokenizers import load_tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    texts = [*TEXTS, "ＷＨＡＴ  is\tthe ﬁne man?", "zzqx unknown ✓"]
    folder = tmp_path / "spiece_only"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(spiece.read_bytes())
    for path in (spiece, folder):
        enc = T5TextEncoder(config=TINY_T5, tokenizer_path=str(path), max_length=64)
        ids, mask = enc.tokenize(texts).values()
        assert [row[m].tolist() for row, m in zip(ids, mask)] == sentencepiece_ids(spiece, texts)
        n = sp.get_piece_size()
        assert enc.vocab_size == n + 100 and (enc.pad_token_id, enc.tokenizer.eos_token_id) == (0, 1)
        # T5's order: the sentinels after the pieces, <extra_id_0> last
        assert enc.mask_token_id == n + 99 == enc.tokenizer.convert_tokens_to_ids("<extra_id_0>")
        assert enc.tokenizer.convert_tokens_to_ids("<extra_id_99>") == n
    enc.tokenizer.save_pretrained(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved", "t5")
    assert again(texts)["input_ids"] == sentencepiece_ids(spiece, texts)


def test_a_sentencepiece_model_not_laid_out_as_t5s_is_refused(tmp_path):
    import io

    import sentencepiece as spm

    from vqa_components.tokenizers import load_tokenizer

    model = io.BytesIO()
    # SentencePiece's default layout: <unk> 0, <s> 1, </s> 2
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 50), model_writer=model, vocab_size=30,
                                   minloglevel=2, hard_vocab_limit=False)
    (tmp_path / "other.model").write_bytes(model.getvalue())
    with pytest.raises(ValueError, match=r"t5: .*other.model is not laid out as T5's SentencePiece model"):
        load_tokenizer(tmp_path / "other.model", "t5")
    (tmp_path / "broken.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="broken.model is not a SentencePiece model"):
        load_tokenizer(tmp_path / "broken.model", "t5")


def test_t5_base_from_the_hub_cache_runs_with_t5s_own_vocabulary_end_to_end(t5_hub, spiece, monkeypatch):
    """The co-tokenization recipes' text parts, ``pretrained_path: t5-base`` for the encoder and the
    text_decoder head, read from a hub cache holding a tiny T5 with a SentencePiece vocabulary trained
    here: the questions and the decoder's labels are the SentencePiece model's ids, a training step of
    a model gives a finite loss and gradients in both, and the head learns to generate the answers'
    text (the end token stops generation, decoding drops the special tokens)."""
    import torch.nn.functional as F
    from helpers import D, tiny_batch, tiny_model, use_hub_cache

    from vqa_components import create
    from vqa_components.heads.text_decoder import IGNORE, TextDecoderHead
    from vqa_components.interfaces import FusionOutput

    use_hub_cache(monkeypatch, t5_hub)
    torch.manual_seed(0)
    enc = T5TextEncoder(pretrained_path="t5-base")
    head = TextDecoderHead(in_dim=D, pretrained_path="t5-base")
    assert enc.weights_source == head.weights_source == "hf-hub:t5-base"
    assert type(enc.tokenizer).__name__ == type(head.tokenizer).__name__ == "T5Tokenizer"
    ids, mask = enc.tokenize(TEXTS).values()
    assert [row[m].tolist() for row, m in zip(ids, mask)] == sentencepiece_ids(spiece, TEXTS)
    assert (ids[~mask] == 0).all() and (head.pad_id, head.eos_id, head.start_id) == (0, 1, 0)
    labels = head.target_ids(ANSWERS)
    expected = sentencepiece_ids(spiece, ANSWERS)
    assert [row[row != IGNORE].tolist() for row in labels] == expected
    assert (labels[0, len(expected[0]) :] == IGNORE).all()  # padding of the shorter targets

    fusion = create("fusion", "cross_attention", video_dim=D, text_dim=enc.out_dim, dim=D, num_layers=1,
                    num_heads=2)
    objective = create("objective", "answer_cross_entropy")
    model = tiny_model(text_encoder=enc, fusion=fusion, head=head, objectives=[objective])
    batch = {**tiny_batch(), "answer": ANSWERS[:3]}
    loss = model.loss(batch, model(batch), "train")
    assert torch.isfinite(loss)
    loss.backward()
    for part in (enc, head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())

    tokens = torch.randn(4, 3, D)
    fused = FusionOutput(pooled=tokens.mean(1), tokens=tokens)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    for _ in range(60):
        out = head(fused, None, targets=ANSWERS)
        loss = F.cross_entropy(out.logits.flatten(0, 1), out.target_ids.flatten(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    assert head.generate(fused) == ANSWERS
