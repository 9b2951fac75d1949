"""text_decoder: targets, teacher forcing, greedy and beam generation, exact-match scoring, local T5 folders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutput

from vqa_components import create
from vqa_components.heads.text_decoder import IGNORE, TextDecoderHead
from vqa_components.interfaces import FusionOutput, ModelOutput
from vqa_components.registry import HEADS

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "left", "right", "two", "cats", "the",
         "square", "ball", "##s", "?"]
T5 = {"d_model": 16, "num_layers": 2, "num_heads": 2, "d_kv": 8, "d_ff": 32, "dropout_rate": 0.0}


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def head(vocab_file, **kwargs) -> TextDecoderHead:
    torch.manual_seed(0)
    in_dim, config = kwargs.pop("in_dim", 12), kwargs.pop("config", T5)
    return TextDecoderHead(in_dim=in_dim, config=config, tokenizer_path=str(vocab_file), **kwargs)


def fused(b=4, m=3, d=12, seed=1) -> FusionOutput:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, m, d, generator=g)
    return FusionOutput(pooled=tokens.mean(1), tokens=tokens)


def test_registered_as_a_generating_head(vocab_file):
    assert HEADS.get("text_decoder") is TextDecoderHead
    h = create("head", "text_decoder", in_dim=12, config=T5, tokenizer_path=str(vocab_file))
    assert h.task == "generate" and h.t5.config.num_decoder_layers == 2 and len(h.t5.encoder.block) == 0
    assert h.t5.config.vocab_size == len(VOCAB) and (h.pad_id, h.eos_id) == (0, 3)  # [PAD], [SEP]


def test_target_ids_close_with_the_end_token_pad_with_ignore_and_truncate(vocab_file):
    h = head(vocab_file, max_answer_tokens=3)
    ids = h.target_ids(["red", "two cats", "the blue square ball"])
    red, two, cats, the, blue = (VOCAB.index(w) for w in ("red", "two", "cats", "the", "blue"))
    assert ids.tolist() == [[red, 3, IGNORE], [two, cats, 3], [the, blue, 3]]


def test_teacher_forcing_reads_the_targets_shifted_right_and_is_causal(vocab_file):
    h = head(vocab_file).eval()
    f = fused(b=2)
    out = h(f, None, targets=["the blue square", "two cats"])
    assert out.logits.shape == (2, 4, len(VOCAB)) and out.target_ids.shape == (2, 4)
    # position j is scored from the start token and targets < j: changing the last word changes
    # only the logits after it
    changed = h(f, None, targets=["the blue ball", "two cats"])
    assert torch.equal(out.logits[:, :2], changed.logits[:, :2])
    assert not torch.allclose(out.logits[0, 3], changed.logits[0, 3])
    # the first position is what one step from the start token gives (forward without targets)
    assert torch.allclose(h(f, None).logits[:, 0], out.logits[:, 0], atol=1e-6)
    # the memory matters: other fused tokens, other scores
    other = h(fused(b=2, seed=5), None, targets=["the blue square", "two cats"]).logits
    assert not torch.allclose(other[1, :3], out.logits[1, :3])


def test_every_trainable_weight_gets_a_gradient(vocab_file):
    """DDP rejects trainable parameters without gradients: the unused encoder leftovers are frozen."""
    h = head(vocab_file, in_dim=12)
    out = h(fused(), None, targets=["red", "left", "two cats", "blue"])
    F.cross_entropy(out.logits.flatten(0, 1), out.target_ids.flatten(), ignore_index=IGNORE).backward()
    missing = [n for n, p in h.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(not p.requires_grad for n, p in h.named_parameters() if n.startswith("t5.encoder.final_layer_norm"))


def test_overfits_a_handful_of_answers_and_greedy_and_beam_generation_return_them(vocab_file):
    h = head(vocab_file)
    f = fused()
    answers = ["red", "two cats", "left", "the blue square"]
    opt = torch.optim.AdamW(h.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        out = h(f, None, targets=answers)
        loss = F.cross_entropy(out.logits.flatten(0, 1), out.target_ids.flatten(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    h.eval()
    assert h.generate(f) == answers
    assert h.generate(f, num_beams=3) == answers
    model_out = ModelOutput(video=None, text=None, fused=f, head=h(f, None))  # type: ignore[arg-type]
    assert h.answers(model_out) == answers
    batch = {"answer": ["Red.", "two cats", "right", "Blue square"]}
    assert h.has_ground_truth(batch) and not h.has_ground_truth({"answer_idx": torch.zeros(4)})
    assert h.score(answers, batch).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_generation_stops_at_max_answer_tokens(vocab_file):
    h = head(vocab_file, max_answer_tokens=2).eval()
    ball = VOCAB.index("ball")
    # an LM head that scores "ball" above every other token, the end token included, at every step:
    # only the limit stops generation
    lm_head = torch.nn.Linear(T5["d_model"], len(VOCAB))
    with torch.no_grad():
        lm_head.weight.zero_()
        lm_head.bias.zero_()
        lm_head.bias[ball] = 1.0
    h.t5.lm_head = lm_head
    assert h.generate(fused(b=2)) == ["ball ball", "ball ball"]
    assert h.generate(fused(b=2), num_beams=2) == ["ball ball", "ball ball"]


def test_tie_word_embeddings_false_gives_the_lm_head_its_own_weight(vocab_file):
    tied = head(vocab_file)
    assert tied.t5.lm_head.weight is tied.t5.shared.weight  # the default: one matrix for both
    h = head(vocab_file, config={**T5, "tie_word_embeddings": False})
    shared, lm = h.t5.shared.weight, h.t5.lm_head.weight
    assert lm is not shared and lm.data_ptr() != shared.data_ptr() and not torch.equal(lm, shared)
    names = {n for n, _ in h.named_parameters()}
    assert {"t5.shared.weight", "t5.lm_head.weight"} <= names
    embedding_before = shared.detach().clone()
    f = fused(b=2)
    before = h(f, None, targets=["red", "two cats"]).logits
    with torch.no_grad():  # change the output projection: the input embedding stays
        lm.add_(1.0)
    assert torch.equal(shared, embedding_before)
    after = h(f, None, targets=["red", "two cats"]).logits
    assert not torch.allclose(after, before)
    lm_before = lm.detach().clone()
    with torch.no_grad():  # change the input embedding: the output projection stays
        shared.mul_(2.0)
    assert torch.equal(h.t5.lm_head.weight, lm_before)
    # both train, each from its own gradient
    out = h(f, None, targets=["red", "two cats"])
    F.cross_entropy(out.logits.flatten(0, 1), out.target_ids.flatten(), ignore_index=IGNORE).backward()
    assert shared.grad is not None and lm.grad is not None and not torch.allclose(shared.grad, lm.grad)


def test_a_local_t5_folder_loads_its_decoder_and_drops_its_encoder(tmp_path, vocab_file):
    from transformers import T5Config, T5ForConditionalGeneration

    from vqa_components.tokenizers import load_tokenizer

    torch.manual_seed(3)
    full = T5ForConditionalGeneration(T5Config(vocab_size=len(VOCAB), pad_token_id=0, eos_token_id=3,
                                               decoder_start_token_id=0, **T5)).eval()
    folder = tmp_path / "t5"
    full.save_pretrained(str(folder))
    load_tokenizer(vocab_file).save_pretrained(str(folder))
    h = TextDecoderHead(in_dim=16, pretrained_path=str(folder)).eval()
    assert h.weights_source == str(folder) and len(h.t5.encoder.block) == 0
    assert torch.equal(h.t5.decoder.block[1].layer[0].SelfAttention.q.weight, full.decoder.block[1].layer[0].SelfAttention.q.weight)
    # the same decoder on the same memory gives the same scores as the full model given that memory
    memory = torch.randn(2, 3, 16)
    ref = full(encoder_outputs=(memory,), decoder_input_ids=torch.tensor([[0, 5], [0, 9]])).logits
    got = h(FusionOutput(pooled=memory.mean(1), tokens=memory), None, targets=["red", "two"]).logits
    assert torch.allclose(got, ref, atol=1e-5)
    # a folder whose vocabulary is smaller than the tokenizer's stops at build time, not at the first forward
    small = T5ForConditionalGeneration(T5Config(vocab_size=len(VOCAB) - 2, pad_token_id=0, eos_token_id=3,
                                                decoder_start_token_id=0, **T5))
    small.save_pretrained(str(tmp_path / "small"))
    with pytest.raises(ValueError, match=f"the tokenizer has {len(VOCAB)} tokens but .*small's vocab_size is "
                                         f"{len(VOCAB) - 2}"):
        TextDecoderHead(in_dim=16, pretrained_path=str(tmp_path / "small"), tokenizer_path=vocab_file)


def test_errors(tmp_path, vocab_file, monkeypatch):
    with pytest.raises(ValueError, match="needs config"):
        TextDecoderHead(in_dim=8)
    with pytest.raises(ValueError, match="needs tokenizer_path"):
        TextDecoderHead(in_dim=8, config=T5)
    from helpers import use_hub_cache

    from vqa_components.interfaces import ConfigError

    use_hub_cache(monkeypatch, tmp_path / "hub")  # a hub id: read through an empty cache, offline
    with pytest.raises(ConfigError, match="text_decoder: pretrained_path 'google/t5-small' is not in"):
        TextDecoderHead(in_dim=8, pretrained_path="google/t5-small")
    with pytest.raises(FileNotFoundError, match="not a local path"):
        TextDecoderHead(in_dim=8, pretrained_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="text_decoder: give pretrained_path .* or config .*, not both"):
        TextDecoderHead(in_dim=8, pretrained_path="t5-base", config=T5)  # no silent choice of one
    with pytest.raises(ValueError, match="max_answer_tokens"):
        head(vocab_file, max_answer_tokens=1)


def test_clip_bpe_vocabulary_of_open_clip(vocab_file):
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(0)
    h = TextDecoderHead(in_dim=12, config=T5, tokenizer_path="clip_bpe").eval()
    bpe = SimpleTokenizer()
    assert h.t5.config.vocab_size == 49409 and (h.pad_id, h.eos_id, h.start_id) == (0, bpe.eot_token_id, bpe.sot_token_id)
    ids = h.target_ids(["two cats", "red"])
    assert ids[0, :3].tolist() == [*bpe.encode("two cats"), bpe.eot_token_id]
    assert ids[1].tolist() == [*bpe.encode("red"), bpe.eot_token_id, IGNORE]
    assert h.decode(torch.tensor([[bpe.sot_token_id, *bpe.encode("two cats"), bpe.eot_token_id]])) == ["two cats"]
    f = fused(b=2)
    out = h(f, None, targets=["two cats", "red"])
    first = h.t5(encoder_outputs=(h.proj(f.tokens),), decoder_input_ids=torch.full((2, 1), bpe.sot_token_id)).logits
    assert torch.allclose(out.logits[:, 0], first[:, 0], atol=1e-6)  # decoding starts from <start_of_text>
    texts = h.generate(f)  # generated ids decode through CLIP's BPE (which has no batch_decode)
    memory = BaseModelOutput(last_hidden_state=h.proj(f.tokens))
    ids = h.t5.generate(encoder_outputs=memory, attention_mask=torch.ones(2, 3, dtype=torch.long),
                        max_new_tokens=h.max_answer_tokens, num_beams=1, do_sample=False)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts) and texts == h.decode(ids)
