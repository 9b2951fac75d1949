"""bert text encoder: the paper's parameter budget, the truncated WordPiece vocabulary, the vocabulary
saved and reloaded with the weights, the real MiniLM folder, and ``vqa vocab``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from vqa_components.interfaces import ConfigError
from vqa_components.registry import TEXT_ENCODERS
from vqa_components.text.bert import (
    SPECIAL_TOKENS,
    BertTextEncoder,
    build_vocab,
    count_words,
    parameter_count,
    read_vocab,
    write_vocab,
)

TEXTS = ["what is the man holding?", "a dog runs across the park"]
TINY = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def vocab_file(tmp_path: Path, words: list[str], name: str = "vocab.txt") -> Path:
    return write_vocab([*SPECIAL_TOKENS, *words], tmp_path / name)


def tiny(path: Path, seed: int = 0, **kw) -> BertTextEncoder:
    torch.manual_seed(seed)
    return BertTextEncoder(vocab_file=str(path), **{**TINY, "dim": 16, **kw}).eval()


def test_registered():
    assert TEXT_ENCODERS.get("bert") is BertTextEncoder


def test_paper_configuration_has_about_2_4m_learnable_parameters(tmp_path):
    """Hidden 128, 4 heads, our 6 layers x FFN 512, 30% of BERT's 30,522 entries, projection to 384.

    Tolerance: within 4% of the paper's 2.4M (we get 2,477,312, +3.2%; the BERT alone 2,427,776, +1.2%);
    the count itself must equal the arithmetic of the module docstring exactly.
    """
    size = round(0.3 * 30_522)
    assert size == 9_157
    path = vocab_file(tmp_path, [f"w{i}" for i in range(size - len(SPECIAL_TOKENS))])
    enc = BertTextEncoder(vocab_file=str(path))
    assert enc.vocab_size == size and enc.out_dim == 384 and enc.hidden_size == 128
    cfg = enc.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (6, 4, 512)
    learnable = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert learnable == parameter_count(size) == 2_477_312
    assert abs(learnable - 2.4e6) / 2.4e6 < 0.04
    assert parameter_count(size, dim=None) == 2_427_776
    total = sum(p.numel() for p in enc.parameters())
    assert total - learnable == 128 * 128 + 128  # only BERT's pooler is frozen (never read)


def test_build_vocab_keeps_exactly_the_most_frequent_words():
    texts = [
        "Red red RED red.",  # red x4 (lowercased), "." x1
        "blue blue blue, green green",  # blue x3, green x2, "," x1
        "a cat, a dog, an owl",  # a x2, cat, dog, an, owl x1, "," x2 -> "," x3
    ]
    counts = count_words(texts)
    assert counts == {
        "red": 4,
        "blue": 3,
        ",": 3,
        "green": 2,
        "a": 2,
        ".": 1,
        "cat": 1,
        "dog": 1,
        "an": 1,
        "owl": 1,
    }
    # 10 distinct words: 30% keeps 3; blue and "," tie at 3 and are ranked alphabetically ("," first)
    words_only = build_vocab(texts, 0.3, characters=False)
    assert words_only == [*SPECIAL_TOKENS, "red", ",", "blue"]
    assert build_vocab(texts, 0.5, characters=False)[5:] == ["red", ",", "blue", "a", "green"]
    assert build_vocab(texts, 1.0, characters=False)[5:] == [
        "red", ",", "blue", "a", "green", ".", "an", "cat", "dog", "owl"]  # fmt: skip
    assert build_vocab(texts, 0.01, characters=False)[5:] == ["red"]  # at least one word
    cased = build_vocab(texts, 1.0, lowercase=False, characters=False)
    assert cased[5:] == [",", "blue", "a", "green", "red", ".", "RED", "Red", "an", "cat", "dog", "owl"]
    full = build_vocab(texts, 0.3)  # then every character, and every character inside a word as ##c
    assert full[:8] == words_only
    assert full[8:] == [".", *"abcdeglnortuw", *(f"##{c}" for c in "adeglnortuw")]  # "," is already a word
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="keep_fraction must be in"):
            build_vocab(texts, bad)


def test_tokenizer_follows_the_built_vocabulary(tmp_path):
    texts = ["the dog runs", "the dog sleeps", "a cat runs"]
    path = write_vocab(build_vocab(texts, 0.4), tmp_path / "vocab.txt")  # 6 distinct words -> 2 kept
    vocab = read_vocab(path)
    assert vocab[5:7] == ["dog", "runs"]  # the, dog and runs tie at 2: alphabetical
    enc = tiny(path)
    assert (enc.pad_token_id, enc.mask_token_id, enc.special_token_ids) == (0, 4, (0, 1, 2, 3, 4))
    ids = enc.tokenize(["The DOG runs zebra", "cat"])

    def pieces(row: int) -> list[str]:
        return [vocab[i] for i in ids["input_ids"][row][ids["attention_mask"][row]].tolist()]

    # "the" was not kept: spelled in pieces; "zebra" has characters the corpus never had: [UNK]
    assert pieces(0) == ["[CLS]", "t", "##h", "##e", "dog", "runs", "[UNK]", "[SEP]"]
    assert pieces(1) == ["[CLS]", "c", "##a", "##t", "[SEP]"]
    assert (ids["input_ids"][~ids["attention_mask"]] == 0).all()


def test_wordpiece_pipeline_matches_berts_own_tokenizer(minilm_folder):
    """Our tokenizer over BERT's vocab.txt cuts text exactly as the MiniLM folder's tokenizer does."""
    from transformers import AutoTokenizer

    from vqa_components.text.bert import wordpiece_tokenizer

    ours = wordpiece_tokenizer(read_vocab(minilm_folder / "vocab.txt"))
    theirs = AutoTokenizer.from_pretrained(str(minilm_folder), local_files_only=True)
    texts = ["Héllo, WORLD! isn't it unbelievably zany?", "a man's dog—running", "x" * 120, "3.5 km/h"]
    assert ours(texts)["input_ids"] == theirs(texts)["input_ids"]


def test_vocabulary_round_trips_with_a_checkpoint(tmp_path):
    words_a = ["man", "holding", "dog", "park", "what", "is", "the", "?", "a", "runs", "across"]
    words_b = ["cat", "sleeps", "on", "mat", "who", "was", "there", "!", "an", "walks", "under"]  # same size
    a = tiny(vocab_file(tmp_path, words_a, "a.txt"), seed=1)
    ckpt = tmp_path / "encoder.pt"
    torch.save(a.state_dict(), ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain values only
    assert isinstance(state["_extra_state"]["tokenizer"], str)
    b = tiny(vocab_file(tmp_path, words_b, "b.txt"), seed=2)
    assert not torch.equal(b.tokenize(TEXTS)["input_ids"], a.tokenize(TEXTS)["input_ids"])
    b.load_state_dict(state)
    assert b.vocab == [*SPECIAL_TOKENS, *words_a]
    tok_a, tok_b = a.tokenize(TEXTS), b.tokenize(TEXTS)
    assert torch.equal(tok_b["input_ids"], tok_a["input_ids"])  # the checkpoint's vocabulary, not b.txt
    assert b.tokenize(["holding"])["input_ids"][0, 1].item() == words_a.index("holding") + len(SPECIAL_TOKENS)
    out_a, out_b = a.encode(TEXTS), b.encode(TEXTS)
    assert torch.equal(out_b.tokens, out_a.tokens) and torch.equal(out_b.cls, out_a.cls)
    # another size: one clear error
    c = tiny(vocab_file(tmp_path, words_b[:-1], "c.txt"))
    with pytest.raises(
        ConfigError, match=r"checkpoint's vocabulary has 16 tokens but this encoder's embedding table has 15"
    ):
        c.load_state_dict(state)


def test_cased_tokenizer_is_restored_with_the_checkpoint(tmp_path):
    cased = tiny(vocab_file(tmp_path, ["Dog", "dog"], "cased.txt"), lowercase=False)
    assert cased.tokenize(["Dog"])["input_ids"][0, 1].item() == 5
    uncased = tiny(vocab_file(tmp_path, ["Cat", "cat"], "uncased.txt"))
    assert uncased.tokenize(["Cat"])["input_ids"][0, 1].item() == 6  # lowercased first
    uncased.load_state_dict(cased.state_dict())
    assert uncased.tokenize(["Dog", "dog"])["input_ids"][:, 1].tolist() == [5, 6]


def test_save_pretrained_round_trips_and_hf_transformer_reads_it(tmp_path):
    from vqa_components.text.hf_transformer import HFTransformerTextEncoder

    enc = tiny(vocab_file(tmp_path, ["what", "is", "the", "man", "holding", "?"]), seed=3)
    folder = enc.save_pretrained(tmp_path / "saved")
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "projection.safetensors"):
        assert (folder / name).is_file(), name
    assert read_vocab(folder / "vocab.txt") == enc.vocab
    again = BertTextEncoder(pretrained_path=str(folder), dim=16).eval()
    assert again.weights_source == str(folder) and again.vocab == enc.vocab
    assert torch.equal(again.encode(TEXTS).tokens, enc.encode(TEXTS).tokens)  # projection included
    hf = HFTransformerTextEncoder(pretrained_path=str(folder), max_length=40).eval()
    hidden = hf.encode(TEXTS).tokens
    torch.testing.assert_close(enc.encode(TEXTS).tokens, enc.proj(hidden), rtol=1e-5, atol=1e-6)


def test_minilm_loads_and_equals_transformers_own_output(minilm_folder):
    from transformers import AutoModel, AutoTokenizer

    enc = BertTextEncoder(pretrained_path=str(minilm_folder), dim=None, max_length=32).eval()
    assert enc.weights_source == str(minilm_folder)
    assert (enc.vocab_size, enc.out_dim, enc.pad_token_id, enc.mask_token_id) == (30522, 384, 0, 103)
    ref = AutoModel.from_pretrained(str(minilm_folder), local_files_only=True).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(minilm_folder), local_files_only=True)
    enc_ref = ref_tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    tok = enc.tokenize(TEXTS)
    assert torch.equal(tok["input_ids"], enc_ref["input_ids"])
    with torch.no_grad():
        out = enc(tok["input_ids"], tok["attention_mask"])
        expected = ref(**enc_ref).last_hidden_state
    assert torch.equal(out.tokens, expected)  # value comparison: the real pretrained weights
    assert torch.equal(out.cls, expected[:, 0])
    assert out.tokens[0, 1].abs().sum() > 1.0  # not zeros
    again = BertTextEncoder(pretrained_path=str(minilm_folder), dim=None, max_length=32).eval()
    with torch.no_grad():
        assert torch.equal(again.encode(TEXTS).tokens, out.tokens)  # deterministic, twice the same
        assert torch.equal(enc.encode(TEXTS).cls, out.cls)
    projected = BertTextEncoder(pretrained_path=str(minilm_folder), dim=16, frozen=True).eval()
    assert not any(p.requires_grad for p in projected.model.parameters())
    assert all(p.requires_grad for p in projected.proj.parameters())  # the projection still trains
    with torch.no_grad():
        torch.testing.assert_close(projected.encode(TEXTS).tokens[:, :8], projected.proj(expected[:, :8]))


def test_frozen_bert_stays_eval(tmp_path):
    enc = tiny(vocab_file(tmp_path, ["a", "b"]), frozen=True)
    enc.train()
    assert enc.training and not any(m.training for m in enc.model.modules())
    enc.encode(["a b"]).cls.sum().backward()
    assert enc.proj.weight.grad is not None
    assert enc.model.embeddings.word_embeddings.weight.grad is None


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="needs vocab_file"):
        BertTextEncoder()
    path = vocab_file(tmp_path, ["a"])
    with pytest.raises(ValueError, match="not both"):
        BertTextEncoder(vocab_file=str(path), pretrained_path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="vocab_file not found"):
        BertTextEncoder(vocab_file=str(tmp_path / "none.txt"))
    no_mask = tmp_path / "no_mask.txt"
    no_mask.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nword\n")
    with pytest.raises(
        ValueError, match=rf"{no_mask}: the vocabulary lacks the special tokens \['\[MASK\]'\]"
    ):
        BertTextEncoder(vocab_file=str(no_mask))
    dup = tmp_path / "dup.txt"
    dup.write_text("\n".join([*SPECIAL_TOKENS, "a", "a"]) + "\n")
    with pytest.raises(ValueError, match="duplicate tokens"):
        read_vocab(dup)
    from helpers import use_hub_cache

    use_hub_cache(monkeypatch, tmp_path / "hub")  # a hub id: read through an empty cache, offline
    with pytest.raises(ConfigError, match="bert: pretrained_path 'google/bert_uncased_L-6_H-128_A-2' is not in"):
        BertTextEncoder(pretrained_path="google/bert_uncased_L-6_H-128_A-2")


# ------------------------------------------------------------------ vqa vocab


TINY_SYNTHETIC = {"num_train": 32, "num_val": 16, "num_test": 16, "clip_frames": 32, "num_frames": 4}


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    recipe = {
        "model": {"text_encoder": {"name": "bert", "vocab_file": "vocab.txt"}},
        "data": {
            "dataset": "synthetic_vqa",
            "dataset_args": dict(TINY_SYNTHETIC),
            "batch_size": 4,
            "num_workers": 0,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_vqa_vocab_builds_the_training_splits_vocabulary(tmp_path, tiny_recipe, capsys):
    from vqa_components.cli import main
    from vqa_components.data.synthetic import SyntheticVQADataset

    out = tmp_path / "out" / "vocab.txt"
    assert main(["vocab", "--config", str(tiny_recipe), "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    train = SyntheticVQADataset(split="train", **TINY_SYNTHETIC)
    samples = [train[i] for i in range(len(train))]  # what the loader serves: question and caption
    texts = [t for s in samples for t in (s["question"], s["caption"]) if t]
    assert read_vocab(out) == build_vocab(texts, 0.3)
    counts = count_words(texts)
    top = max(counts, key=lambda w: (counts[w], -ord(w[0])))
    assert top in read_vocab(out)[5:10]
    val = SyntheticVQADataset(split="val", **TINY_SYNTHETIC)
    only_val = set(count_words(r.question for r in val.records)) - set(counts)
    assert not only_val & set(read_vocab(out))  # the training split only
    wide = tmp_path / "wide.txt"
    assert main(["vocab", "--config", str(tiny_recipe), "--out", str(wide), "--keep_fraction=1"]) == 0
    assert set(counts) <= set(read_vocab(wide)) and len(read_vocab(wide)) > len(read_vocab(out))
    enc = tiny(out)  # the bert encoder reads it
    assert enc.vocab_size == len(read_vocab(out))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "x.txt"], "vocab needs --config or --corpus, and --out"),
        (["--max_words", "0"], "--max_words '0': expected a positive number of words"),
        (["--keep_fraction", "2"], "--keep_fraction '2': expected a share of the words in (0, 1]"),
        (["--keep_fraction", "lots"], "--keep_fraction 'lots'"),
        (["--bogus", "1"], "vocab: unexpected argument(s) --bogus 1"),
    ],
)
def test_vqa_vocab_user_errors_are_one_line(tmp_path, tiny_recipe, capsys, args, message):
    from vqa_components.cli import main

    base = [] if args[0] == "--out" else ["--config", str(tiny_recipe), "--out", str(tmp_path / "v.txt")]
    assert main(["vocab", *base, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("vqa: error: ")


def test_vqa_vocab_from_a_coco_captions_corpus_has_the_expected_size(tmp_path, capsys):
    """E-ViLM keeps the most frequent 30 % of COCO's caption words: --corpus reads COCO's captions file
    (and JSONL records, plain text lines); the size is the special tokens, the kept words and the
    characters, and --max_words caps the words."""
    import json

    from vqa_components.cli import main
    from vqa_components.text.bert import SPECIAL_TOKENS

    captions = ["a man rides a horse", "a man walks a dog", "a dog runs", "two cats sleep on a bed"]
    coco = tmp_path / "captions_train2017.json"
    coco.write_text(json.dumps({"images": [], "annotations": [{"id": i, "image_id": i, "caption": c}
                                                              for i, c in enumerate(captions)]}))
    words = {w for c in captions for w in c.split()}  # 13 distinct: a, man, dog, ... (no punctuation)
    chars = {ch for w in words for ch in w}
    inner = {ch for w in words for ch in w[1:]}
    out = tmp_path / "vocab.txt"
    assert main(["vocab", "--corpus", str(coco), "--out", str(out), "--keep_fraction", "0.3"]) == 0
    vocab = out.read_text().splitlines()
    kept = vocab[len(SPECIAL_TOKENS):len(SPECIAL_TOKENS) + round(0.3 * len(words))]
    assert kept == ["a", "dog", "man", "bed"]  # 30 % of 13 words, most frequent first (ties by spelling)
    assert len(vocab) == len(SPECIAL_TOKENS) + len(kept) + len(chars - set(kept)) + len(inner)
    assert f"from {len(captions)} texts of {coco}" in capsys.readouterr().out
    # the same texts as JSON lines and as plain text, and a cap on the words
    lines = tmp_path / "corpus.jsonl"
    lines.write_text("\n".join(json.dumps({"caption": c}) for c in captions[:2]) + "\n")
    plain = tmp_path / "more.txt"
    plain.write_text("\n".join(captions[2:]) + "\n")
    capped = tmp_path / "capped.txt"
    assert main(["vocab", "--corpus", str(lines), "--corpus", str(plain), "--out", str(capped),
                 "--keep_fraction", "1", "--max_words", "2"]) == 0
    assert capped.read_text().splitlines()[len(SPECIAL_TOKENS):len(SPECIAL_TOKENS) + 3] == ["a", "dog", "b"]  # then characters
    assert main(["vocab", "--corpus", str(tmp_path / "missing.json"), "--out", str(capped)]) == 2


def test_vqa_vocab_bad_data_section_is_one_line(tmp_path, capsys):
    from vqa_components.cli import main

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "synthetic_vqa", "dataset_args": {"nonsense": 1}}}))
    assert main(["vocab", "--config", str(recipe), "--out", str(tmp_path / "v.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonsense" in err[0]
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "synthetic_vqaa"}}))
    assert main(["vocab", "--config", str(recipe), "--out", str(tmp_path / "v.txt")]) == 2
    assert "synthetic_vqa" in capsys.readouterr().err
