"""A small BERT with a truncated WordPiece vocabulary and a final projection (E-ViLM's language encoder).

E-ViLM (section 3.1, "Language Encoder"; section 4, "Architectural Details") uses "a small BERT
architecture with decreased hidden dimension [128] and squeezed vocabulary" (4 attention heads per
layer; the tokenizer keeps "only the top 30% most frequent words" of a corpus), "only 2.4M
learnable parameters", and "a linear projection layer [that] maps the language embedding to a
consistent dimension at the end"::

    texts ─► WordPiece tokenizer (vocab_file, or the pretrained folder's; saved in the part's state)
          ─► [CLS] w1 w2 ... [SEP] [PAD]...                                   input_ids (b, l)
          ─► BertModel: word + position + type embeddings ─► num_layers x (self-attention, FFN)
          ─► last hidden state (b, l, hidden_size)
          ─► Linear hidden_size -> dim ─► tokens (b, l, dim)
                                           cls (b, dim) = projected [CLS] state (pooling="cls")
                                                          or projected masked mean (pooling="mean")

Parameter arithmetic (``H`` hidden, ``L`` layers, ``I`` intermediate, ``V`` vocabulary, ``P``
positions, ``D`` = ``dim``; :func:`parameter_count` computes it, the tests compare it with the model):

* embeddings ``(V + P + 2) H + 2H`` (word, position, 2 token types, LayerNorm);
* each layer ``4(H² + H)`` (Q, K, V, attention output) ``+ (HI + I) + (IH + H)`` (FFN) ``+ 4H``
  (two LayerNorms);
* projection ``HD + D``.

The paper fixes ``H = 128`` and 4 heads; ``L`` and ``I`` are ours: ``L = 6`` and ``I = 4H = 512``
(BERT's ratio) give the closest count to 2.4M. With ``V = 9,157`` (30% of BERT's 30,522 entries,
rounded) and BERT's ``P = 512``: embeddings 1,238,144 + 6 layers x 198,272 = 1,189,632, i.e.
2,427,776 for the BERT itself, + 49,536 for the projection to ``D = 384`` (the width of the paper's
cross-modal decoder) = **2,477,312** learnable parameters (2.4M + 3.2%). 5 layers would give
2.23M, 7 layers 2.68M; BERT's full vocabulary would add 2.73M to the embedding table.

Choices the paper leaves open:

* **Layers and FFN width**: 6 and 512, by the arithmetic above.
* **Vocabulary** (:func:`build_vocab`, ``vqa vocab``): see "How the top 30% of words becomes a
  WordPiece vocabulary" below; we build it from the training split's questions and captions (the
  paper counts COCO captions, which this library does not ship).
* **Pooler.** BERT's tanh pooler on ``[CLS]`` is kept, frozen and unused (so that folders round-trip
  through ``transformers`` without load reports); it is not a learnable parameter and not counted.
* **Projection**: applied to every token and to ``cls``; ``frozen`` freezes the BERT, never the
  projection (no pretrained file holds it). ``dim=None`` drops it (``out_dim = hidden_size``).
* **cls**: the ``[CLS]`` state by default (BERT's convention); ``pooling="mean"`` for the masked mean.

How the top 30% of words becomes a WordPiece vocabulary (:func:`build_vocab`): a *word* is what
BERT's own text pipeline (the ``tokenizers`` library's ``BertNormalizer`` and
``BertPreTokenizer``, the same ones the tokenizer runs) makes of a text: lowercased and accents
stripped (``lowercase=True``), split at whitespace and at every punctuation character, which is a
word of its own. The distinct words of the corpus are ranked by count (ties alphabetically) and the
first ``round(keep_fraction x number of distinct words)`` (at least one) are kept, each as one
whole-word WordPiece entry. The vocabulary is, in this order: the five special tokens ``[PAD]``
``[UNK]`` ``[CLS]`` ``[SEP]`` ``[MASK]`` (ids 0 to 4), the kept words by rank, and, with
``characters=True`` (default), every character of the corpus's words not already there, alone, and
every character that follows another inside a word as the continuation piece ``##c`` (so that a
word outside the vocabulary is spelled out in pieces rather than lost as ``[UNK]``, as long as its
characters occur in the corpus; this adds about twice the alphabet, ~70 entries for English).
``vocab_size`` is therefore ``5 + kept words + characters``, not 30% of the words.

The vocabulary is saved with the weights: the module's extra state (``get_extra_state``) holds the
tokenizer (its ``tokenizers`` JSON: vocabulary, normaliser, ``[CLS]``/``[SEP]`` template) and its
special tokens, as plain strings that ``torch.load(weights_only=True)`` reads. Loading a state dict
rebuilds the tokenizer from it, so an encoder built from another ``vocab_file`` tokenizes as the
checkpoint's did; a vocabulary of another size than the embedding table is an error.

Weights: random init by default (``vocab_file`` required); ``pretrained_path`` loads a local folder
of a pretrained BERT-family model (config, weights, tokenizer), or a Hugging Face model id
(``bert-base-uncased``) through the hub cache, through
:func:`~vqa_components.text.hf_transformer.load_local_model`, the loading path of
``hf_transformer`` (the architecture arguments are then the model's, and so is the vocabulary).
Nothing is downloaded unless a hub id is named (``HF_HUB_OFFLINE=1``: the cache only).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vqa_components.interfaces import ConfigError, TextFeatures
from vqa_components.registry import TEXT_ENCODERS
from vqa_components.text._tokenized import TokenizedTextEncoder
from vqa_components.text.hf_transformer import load_local_model
from vqa_components.weights import read_state_dict

log = logging.getLogger(__name__)

#: BERT's special tokens, in the order a built vocabulary starts with (ids 0 to 4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_NAMES = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}  # fmt: skip
#: the special-token attributes of a transformers tokenizer kept in the extra state
_SPECIAL_ATTRS = ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")
EXTRA_STATE_FORMAT = "vqa_components.text.bert/1"
PROJECTION_FILE = "projection.safetensors"


# ------------------------------------------------------------------ vocabulary


def _normalizer(lowercase: bool) -> Any:
    from tokenizers import normalizers

    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                      lowercase=lowercase)  # fmt: skip


def count_words(texts: Iterable[str], lowercase: bool = True) -> Counter[str]:
    """How often each word occurs in ``texts``, words as BERT's normaliser and pre-tokeniser cut them."""
    from tokenizers import pre_tokenizers

    norm, pre = _normalizer(lowercase), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        if text:
            counts.update(word for word, _ in pre.pre_tokenize_str(norm.normalize_str(str(text))))
    return counts


def build_vocab(
    texts: Iterable[str],
    keep_fraction: float = 0.3,
    lowercase: bool = True,
    *,
    characters: bool = True,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    max_words: int | None = None,
) -> list[str]:
    """A WordPiece vocabulary of the most frequent words of ``texts`` (module docstring: how exactly).

    Args:
        texts: the corpus (e.g. the training split's questions and captions).
        keep_fraction: share of the distinct words kept, in ``(0, 1]``: the
            ``round(keep_fraction * distinct words)`` most frequent (at least one).
        lowercase: lowercase and strip accents first (an uncased vocabulary); the encoder's
            ``lowercase`` must match.
        characters: also add every character of the corpus's words, alone and as ``##c``.
        special_tokens: first entries; must include ``[PAD] [UNK] [CLS] [SEP] [MASK]`` for the encoder.
        max_words: keep at most this many words (a size cap on top of ``keep_fraction``).

    Returns:
        The tokens by id (line ``i`` of ``vocab.txt`` is id ``i``).
    """
    if not 0.0 < float(keep_fraction) <= 1.0:
        raise ValueError(f"build_vocab: keep_fraction must be in (0, 1], got {keep_fraction}")
    counts = count_words(texts, lowercase)
    if not counts:
        raise ValueError("build_vocab: the texts hold no words")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    keep = max(1, math.floor(float(keep_fraction) * len(ranked) + 0.5))
    if max_words is not None:
        if max_words < 1:
            raise ValueError(f"build_vocab: max_words must be at least 1, got {max_words}")
        keep = min(keep, max_words)
    vocab = list(dict.fromkeys(special_tokens))
    seen = set(vocab)
    for word, _ in ranked[:keep]:
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    if characters:
        chars = sorted({c for word in counts for c in word})
        inner = sorted({c for word in counts for c in word[1:]})  # punctuation is never inside a word
        for piece in [*chars, *(f"##{c}" for c in inner)]:
            if piece not in seen:
                vocab.append(piece)
                seen.add(piece)
    return vocab


def read_corpus(path: str | os.PathLike) -> list[str]:
    """The texts of a corpus file, for :func:`build_vocab`: a COCO captions file (``{"annotations":
    [{"caption": ...}]}``), a JSON list of strings or of records, JSON lines (records), or plain
    text (one text per line). A record's text is its ``caption``, ``text``, ``question`` or
    ``sentence`` (each present one counts)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {path}: no such file")
    raw = path.read_text(encoding="utf-8")
    fields = ("caption", "text", "question", "sentence")

    def texts_of(items: Iterable, where: str) -> list[str]:
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and any(isinstance(item.get(f), str) for f in fields):
                out += [item[f] for f in fields if isinstance(item.get(f), str)]
            else:
                raise ValueError(f"corpus {path}: {where} {i} has none of the text fields {', '.join(fields)}")
        return out

    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"corpus {path}: invalid JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):  # COCO captions
            return texts_of(data["annotations"], "annotation")
        if isinstance(data, list):
            return texts_of(data, "item")
        raise ValueError(f"corpus {path}: expected COCO's {{\"annotations\": [...]}} or a list")
    if path.suffix == ".jsonl":
        lines = [line for line in raw.splitlines() if line.strip()]
        try:
            return texts_of([json.loads(line) for line in lines], "line")
        except json.JSONDecodeError as exc:
            raise ValueError(f"corpus {path}: invalid JSON line: {exc}") from None
    return [line for line in raw.splitlines() if line.strip()]


def write_vocab(vocab: Sequence[str], path: str | os.PathLike) -> Path:
    """Write ``vocab`` as a ``vocab.txt`` (one token per line, line ``i`` = id ``i``); returns the path."""
    check_vocab(vocab, str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(f"{tok}\n" for tok in vocab), encoding="utf-8")
    return p


def read_vocab(path: str | os.PathLike) -> list[str]:
    """The tokens of a ``vocab.txt`` by id (checked: no empty line, no duplicate, no whitespace)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"bert: vocab_file not found: {p} (write one with `vqa vocab`)")
    vocab = p.read_text(encoding="utf-8").splitlines()
    check_vocab(vocab, str(p))
    return vocab


def check_vocab(vocab: Sequence[str], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``vocab`` is a usable WordPiece vocabulary."""
    if not vocab:
        raise ValueError(f"{where}: the vocabulary is empty")
    bad = [i for i, tok in enumerate(vocab) if not tok or tok != tok.strip() or any(c.isspace() for c in tok)]
    if bad:
        raise ValueError(f"{where}: line {bad[0] + 1} is empty or holds whitespace ({vocab[bad[0]]!r})")
    dup = [tok for tok, n in Counter(vocab).items() if n > 1]
    if dup:
        raise ValueError(f"{where}: duplicate tokens {dup[:5]}")
    missing = [tok for tok in SPECIAL_TOKENS if tok not in set(vocab)]
    if missing:
        raise ValueError(f"{where}: the vocabulary lacks the special tokens {missing}")


def wordpiece_tokenizer(vocab: Sequence[str], lowercase: bool = True) -> Any:
    """A fast ``transformers`` tokenizer over ``vocab``: BERT's normaliser, pre-tokeniser, WordPiece
    model and ``[CLS] ... [SEP]`` template (the pipeline :func:`build_vocab` counts words with)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    check_vocab(vocab, "bert tokenizer")
    ids = {tok: i for i, tok in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = _normalizer(lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.BertProcessing(("[SEP]", ids["[SEP]"]), ("[CLS]", ids["[CLS]"]))
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **_SPECIAL_NAMES)


def parameter_count(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 6,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    dim: int | None = 384,
    type_vocab_size: int = 2,
) -> int:
    """Learnable parameters of the encoder (BERT without its frozen pooler, plus the projection)."""
    h, i = hidden_size, intermediate_size
    embeddings = (vocab_size + max_position_embeddings + type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    projection = 0 if dim is None else h * dim + dim
    return embeddings + num_layers * layer + projection


# ------------------------------------------------------------------ the encoder


@TEXT_ENCODERS.register("bert")
class BertTextEncoder(TokenizedTextEncoder):
    """Small BERT over a truncated WordPiece vocabulary, linearly projected (E-ViLM's language encoder).

    Args (keyword only):
        vocab_file: a ``vocab.txt`` (``vqa vocab`` writes one) for a random-init build; sets
            ``vocab_size`` and the special ids (``[PAD]``, ``[MASK]``, ...). Not with ``pretrained_path``.
        pretrained_path: local folder of a pretrained BERT-family model (config, weights, tokenizer),
            or a Hugging Face model id read through the hub cache (``bert-base-uncased``); its
            architecture and vocabulary replace the arguments below.
        dim: width of the final projection (``out_dim``); ``None``: no projection.
        hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings: the BERT
            (random init); defaults: the paper's 128 and 4 heads, our 6 layers and 512.
        dropout: BERT's hidden and attention dropout (random init).
        max_length: tokens per text, ``[CLS]`` and ``[SEP]`` included (longer texts are truncated).
        pooling: ``"cls"`` (the ``[CLS]`` state) or ``"mean"`` (masked mean), before the projection.
        lowercase: the tokenizer lowercases and strips accents (match the vocabulary's ``lowercase``).
        frozen: no gradients for the BERT, eval mode (the projection still trains).

    ``forward(input_ids (b, l), attention_mask (b, l))`` -> ``TextFeatures(tokens (b, l, out_dim),
    cls (b, out_dim), mask (b, l))``.
    """

    fsdp_blocks = ("BertLayer",)  # its repeated blocks: FSDP units (vqa_components.fsdp)

    def __init__(
        self,
        *,
        vocab_file: str | None = None,
        pretrained_path: str | None = None,
        dim: int | None = 384,
        hidden_size: int = 128,
        num_layers: int = 6,
        num_heads: int = 4,
        intermediate_size: int = 512,
        max_position_embeddings: int = 512,
        dropout: float = 0.1,
        max_length: int = 40,
        pooling: Literal["cls", "mean"] = "cls",
        lowercase: bool = True,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if pooling not in ("cls", "mean"):
            raise ValueError(f"bert: pooling must be 'cls' or 'mean', got {pooling!r}")
        if pretrained_path is not None:
            if vocab_file is not None:
                raise ValueError(
                    "bert: give vocab_file (random init) or pretrained_path (its own vocabulary), not both"
                )
            self.model, tokenizer, self.weights_source = load_local_model(
                "bert",
                pretrained_path,
                None,
                None,
                AutoModel.from_pretrained,
                lambda cfg: None,  # never called: pretrained_path is given
            )
        else:
            if vocab_file is None:
                raise ValueError(
                    "bert: a random-init build needs vocab_file (a vocab.txt; `vqa vocab` writes one)"
                )
            tokenizer = wordpiece_tokenizer(read_vocab(vocab_file), lowercase)
            config = BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                intermediate_size=intermediate_size,
                max_position_embeddings=max_position_embeddings,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
                pad_token_id=tokenizer.pad_token_id,
            )
            self.model = BertModel(config)
        if not hasattr(tokenizer, "backend_tokenizer"):
            raise ValueError(
                f"bert: {pretrained_path}: needs a fast (tokenizers) tokenizer, "
                f"got {type(tokenizer).__name__}"
            )
        pooler = getattr(self.model, "pooler", None)
        if isinstance(pooler, nn.Module):  # kept for round trips, never read: frozen (no DDP unused grads)
            pooler.requires_grad_(False)
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos is not None and max_length > max_pos:
            raise ValueError(
                f"bert: max_length={max_length} exceeds the model's max_position_embeddings={max_pos}"
            )
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.hidden_size = int(self.model.config.hidden_size)
        self.proj = nn.Linear(self.hidden_size, dim) if dim is not None else None
        self.out_dim = int(dim) if dim is not None else self.hidden_size
        self.max_length = max_length
        self.pooling = pooling
        self.frozen = frozen
        self.vocab_source = str(pretrained_path if pretrained_path is not None else vocab_file)
        self._set_tokenizer(tokenizer)
        #: the vocabulary size this encoder was built for (a checkpoint's must match it)
        self.tokenizer_size = len(tokenizer)
        if self.tokenizer_size > self.vocab_size:
            raise ValueError(
                f"bert: the tokenizer has {self.tokenizer_size} tokens but the embedding only "
                f"{self.vocab_size} rows"
            )
        if pretrained_path is not None and Path(pretrained_path).expanduser().is_dir():  # a hub id has none
            self._load_projection(Path(pretrained_path).expanduser())
        if frozen:
            self.model.requires_grad_(False)
        self.train(False)  # as hf_transformer: from_pretrained leaves eval mode; the same for both paths
        self.config = {
            "hidden_size": self.hidden_size,
            "dim": dim,
            "max_length": max_length,
            "pooling": pooling,
        }

    # ------------------------------------------------------------- tokenizer
    def _set_tokenizer(self, tokenizer: Any) -> None:
        for name in ("pad_token_id", "mask_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(
                    f"bert: the tokenizer ({self.vocab_source}) has no {name.removesuffix('_id')} token"
                )
        self.tokenizer = tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.special_token_ids = tuple(sorted({int(i) for i in tokenizer.all_special_ids}))

    @property
    def vocab(self) -> list[str]:
        """The tokenizer's tokens by id."""
        return [tok for tok, _ in sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]

    def get_extra_state(self) -> dict[str, Any]:
        """The tokenizer as plain values (saved in every ``state_dict``, read back by ``set_extra_state``)."""
        special = {
            a: str(getattr(self.tokenizer, a)) for a in _SPECIAL_ATTRS if getattr(self.tokenizer, a, None)
        }
        return {
            "format": EXTRA_STATE_FORMAT,
            "tokenizer": self.tokenizer.backend_tokenizer.to_str(),
            "special_tokens": special,
        }

    def set_extra_state(self, state: Any) -> None:
        """Rebuild the tokenizer from a checkpoint's vocabulary (its size must be this encoder's)."""
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        if not isinstance(state, dict) or state.get("format") != EXTRA_STATE_FORMAT:
            raise ConfigError(
                f"bert: the checkpoint's text-encoder state is not a bert vocabulary ({EXTRA_STATE_FORMAT}); "
                f"got {type(state).__name__}"
            )
        backend = Tokenizer.from_str(state["tokenizer"])
        size = backend.get_vocab_size(with_added_tokens=True)
        if size != self.tokenizer_size:
            raise ConfigError(
                f"bert: the checkpoint's vocabulary has {size} tokens but this encoder's embedding table has "
                f"{self.vocab_size} rows for a vocabulary of {self.tokenizer_size} "
                f"(from {self.vocab_source}); "
                f"build the encoder from a vocabulary of the checkpoint's size, e.g. its own vocab.txt"
            )
        self._set_tokenizer(
            PreTrainedTokenizerFast(tokenizer_object=backend, **dict(state.get("special_tokens", {})))
        )
        embeddings = self.model.get_input_embeddings()
        if getattr(embeddings, "padding_idx", None) is not None:
            embeddings.padding_idx = self.pad_token_id
        self.model.config.pad_token_id = self.pad_token_id

    # --------------------------------------------------------------- weights
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the BERT (``config.json``, ``model.safetensors``), its tokenizer (``tokenizer.json``,
        ``vocab.txt``) and the projection (``projection.safetensors``); ``pretrained_path=folder``
        reads it back."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        if type(self.tokenizer.backend_tokenizer.model).__name__ == "WordPiece":
            write_vocab(self.vocab, folder / "vocab.txt")
        if self.proj is not None:
            save_file(
                {k: v.detach().contiguous() for k, v in self.proj.state_dict().items()},
                str(folder / PROJECTION_FILE),
            )
        return folder

    def _load_projection(self, folder: Path) -> None:
        path = folder / PROJECTION_FILE
        if self.proj is None or not path.is_file():
            return
        state = read_state_dict(path, "the bert projection")
        own = self.proj.state_dict()
        if {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in own.items()}:
            log.warning("bert: %s is for another dim (%s); the projection to %d keeps its random init",
                        path, tuple(state.get("weight", torch.empty(0)).shape), self.out_dim)  # fmt: skip
            return
        self.proj.load_state_dict(state)

    def train(self, mode: bool = True) -> BertTextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    # --------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        mask = attention_mask.bool()
        hidden = self.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            cls = hidden[:, 0]
        else:
            w = mask.unsqueeze(-1).to(hidden.dtype)
            cls = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
        if self.proj is not None:
            hidden, cls = self.proj(hidden), self.proj(cls)
        return TextFeatures(tokens=hidden, cls=cls, mask=mask, input_ids=input_ids)

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, out_dim={self.out_dim}, "
            f"pooling={self.pooling!r}, frozen={self.frozen}"
        )
