"""Text tokenizers shared by the text encoders and the ``text_decoder`` head.

Two kinds of tokenizer are used:

* **CLIP's BPE** (:class:`ClipBPETokenizer`): the 49,408-token vocabulary that ships inside
  ``open_clip``, selected by ``tokenizer_path: clip_bpe`` (:data:`CLIP_BPE`);
* **a ``transformers`` tokenizer** from a local folder, a WordPiece ``vocab.txt``, or a Hugging
  Face model id read through the hub cache as ``AutoTokenizer.from_pretrained(id)`` does
  (:func:`load_tokenizer`; nothing is downloaded unless an id is named);
* **T5's own SentencePiece vocabulary** (``t5-base``'s 32,000 pieces and 100 sentinels): the hub
  id, a folder that ``save_pretrained`` wrote, or a bare ``spiece.model`` (a file, or a folder
  holding one and no ``tokenizer.json``), converted by transformers (:func:`t5_sentencepiece_tokenizer`).

:func:`encode_batch` and :func:`count_tokens` tokenize a batch and count a text's tokens the same
way for both, so that an encoder, the head and the long-question screen
(:meth:`~vqa_components.interfaces.TextEncoder.token_counter`) agree.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vqa_components.weights import from_hub, local_or_hub

#: ``tokenizer_path`` value that selects CLIP's BPE vocabulary shipped with open_clip
CLIP_BPE = "clip_bpe"


def clip_bpe_counts(bpe: Any, texts: Sequence[str]) -> list[int]:
    """Untruncated token count of each text under open_clip's ``SimpleTokenizer`` ``bpe``, ``<start>`` and ``<end>`` included."""
    return [len(bpe.encode(t)) + 2 for t in texts]


def open_clip_tokenizer_module() -> Any:
    """open_clip's ``tokenizer`` module. Read from its file when open_clip is not imported yet: the
    package's ``__init__`` imports its models, timm and torchvision (4 s of a 5 s ``vqa ask``), and the
    tokenizer module imports none of them (only ``ftfy``, ``regex``, ``numpy`` and ``torch``)."""
    if "open_clip" in sys.modules or _OPEN_CLIP_TOKENIZER in sys.modules:
        return sys.modules.get(_OPEN_CLIP_TOKENIZER) or importlib.import_module("open_clip.tokenizer")
    spec = importlib.util.find_spec("open_clip")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return importlib.import_module("open_clip.tokenizer")  # not installed: that import names it
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location(_OPEN_CLIP_TOKENIZER, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[_OPEN_CLIP_TOKENIZER] = module
    module_spec.loader.exec_module(module)
    return module


#: the name open_clip's tokenizer module is kept under when read alone
_OPEN_CLIP_TOKENIZER = "vqa_components._open_clip_tokenizer"


class ClipBPETokenizer:
    """Wraps ``open_clip``'s ``SimpleTokenizer`` (49,408-token BPE vocabulary).

    CLIP's vocabulary has no mask token, so one id is appended after it
    (``mask_token_id = 49408``) for masked-language objectives; models using
    this tokenizer size their embedding ``vocab_size = 49409``.

    ``__call__(texts) -> {"input_ids": (b, l), "attention_mask": (b, l)}``
    where ``l`` is the longest sequence in the batch (at most
    ``context_length``), ``<start>`` and ``<end>`` included, padded with 0.
    """

    def __init__(self, context_length: int = 77) -> None:
        self._tok = open_clip_tokenizer_module().SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.sot_token_id = self._tok.sot_token_id
        self.eot_token_id = self._tok.eot_token_id
        self.pad_token_id = 0
        self.mask_token_id = len(self._tok.encoder)
        self.vocab_size = self.mask_token_id + 1
        self.special_token_ids = (self.pad_token_id, self.sot_token_id, self.eot_token_id, self.mask_token_id)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without open_clip's tokenizer object (whose module may be the copy read by
        :func:`open_clip_tokenizer_module`, which another process cannot import by name: ``ddp_spawn``
        pickles the model); ``__setstate__`` builds it again from ``context_length``."""
        state = self.__dict__.copy()
        del state["_tok"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tok = open_clip_tokenizer_module().SimpleTokenizer(context_length=self.context_length)

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        ids = self._tok(list(texts))  # (b, context_length), eot kept when truncating
        eot = (ids == self.eot_token_id).int().argmax(-1)
        length = int(eot.max()) + 1
        ids = ids[:, :length].contiguous()
        mask = torch.arange(length)[None, :] <= eot[:, None]
        return {"input_ids": ids, "attention_mask": mask}

    def count(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count before truncation to ``context_length``."""
        return clip_bpe_counts(self._tok, texts)

    def decode(self, ids: list[int]) -> str:
        keep = [i for i in ids if i not in self.special_token_ids]
        return self._tok.decode(keep).strip()


#: T5's SentencePiece model file, as its hub repositories and ``save_pretrained`` name it
SPIECE = "spiece.model"
#: the first three pieces of T5's SentencePiece model: ids 0, 1, 2 (padding, end, unknown)
T5_SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")


def t5_sentencepiece_tokenizer(path: str | Path, owner: str = "t5") -> Any:
    """T5's tokenizer from its SentencePiece model ``spiece.model`` (the file, or a folder holding it),
    as ``transformers`` builds it (``T5Tokenizer.from_pretrained``, which converts the model with
    ``sentencepiece`` and ``protobuf``): the model's pieces in their order (``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2), its normaliser, then 100 sentinels ``<extra_id_99>`` ... ``<extra_id_0>`` (or the
    folder's ``tokenizer_config.json``'s ``extra_ids``), and ``</s>`` closing every text. A model of
    another layout (other special pieces) is refused in one line."""
    import shutil
    import tempfile

    import sentencepiece
    from transformers import T5Tokenizer

    p = Path(path).expanduser()
    file = p / SPIECE if p.is_dir() else p
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(file))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{owner}: {file} is not a SentencePiece model ({exc})") from None
    first = tuple(sp.id_to_piece(i) for i in range(min(3, sp.get_piece_size())))
    if first != T5_SPECIAL_PIECES:
        raise ValueError(
            f"{owner}: {file} is not laid out as T5's SentencePiece model (its first pieces must be "
            f"{', '.join(T5_SPECIAL_PIECES)}; this one's: {', '.join(first)})"
        )
    if file.name == SPIECE:
        return T5Tokenizer.from_pretrained(str(file.parent), local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:  # from_pretrained reads the file by T5's name
        shutil.copyfile(file, Path(tmp) / SPIECE)
        return T5Tokenizer.from_pretrained(tmp, local_files_only=True)


def _cached_spiece_only(repo_id: str) -> Path | None:
    """``spiece.model`` of the hub repository ``repo_id`` when the cache holds it but no ``tokenizer.json``
    (``google/t5-v1_1-base`` ships none), else ``None``: then ``AutoTokenizer`` reads the repository."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "tokenizer.json"), str):
        return None
    spiece = try_to_load_from_cache(repo_id, SPIECE)
    return Path(spiece) if isinstance(spiece, str) else None


def load_tokenizer(path: str | Path, owner: str = "hf_transformer") -> Any:
    """A tokenizer from a local folder (``AutoTokenizer``), a WordPiece ``vocab.txt`` file, T5's
    ``spiece.model`` (:func:`t5_sentencepiece_tokenizer`: the file, or a folder holding it and no
    ``tokenizer.json``), or a Hugging Face model id (``AutoTokenizer.from_pretrained(id)`` through the
    hub cache; its errors as one line, :func:`~vqa_components.weights.from_hub`)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    p = local_or_hub(path, "tokenizer_path", owner)
    if isinstance(p, str):
        spiece = _cached_spiece_only(p)
        if spiece is not None:
            return t5_sentencepiece_tokenizer(spiece, owner)
        return from_hub(lambda: AutoTokenizer.from_pretrained(p), owner, "tokenizer_path", p)
    spiece_only = p.is_dir() and (p / SPIECE).is_file() and not (p / "tokenizer.json").is_file()
    if p.suffix == ".model" or spiece_only:
        return t5_sentencepiece_tokenizer(p, owner)
    if p.is_file():
        # transformers >= 5 takes ``vocab`` (a dict or file) and silently ignores ``vocab_file``;
        # 4.x takes ``vocab_file``. Pass what this version understands.
        params = inspect.signature(BertTokenizerFast.__init__).parameters
        lines = p.read_text(encoding="utf-8").splitlines()
        vocab = {tok: i for i, tok in enumerate(line.rstrip("\r") for line in lines) if tok}
        if "vocab" in params:
            tok = BertTokenizerFast(vocab=vocab)
        else:
            tok = BertTokenizerFast(vocab_file=str(p))
        if len(tok) < len(vocab):
            raise ValueError(
                f"{owner}: {p} has {len(vocab)} tokens but the tokenizer built from it has {len(tok)}"
            )
        return tok
    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


def load_tokenizer_or_clip_bpe(
    path: str | Path, owner: str = "hf_transformer", context_length: int = 77
) -> Any:
    """:class:`ClipBPETokenizer` for ``path == "clip_bpe"``, else :func:`load_tokenizer`."""
    return ClipBPETokenizer(context_length) if str(path) == CLIP_BPE else load_tokenizer(path, owner)


def tokenizer_size(tokenizer: Any) -> int:
    """Ids the tokenizer can emit (CLIP BPE: its vocabulary and the mask token)."""
    return tokenizer.vocab_size if isinstance(tokenizer, ClipBPETokenizer) else len(tokenizer)


def encode_batch(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
    """``input_ids`` and a bool ``attention_mask`` ``(b, l)``: texts padded to the longest, cut at ``max_length``.

    A :class:`ClipBPETokenizer` cuts at its own ``context_length`` (built as the encoder's limit).
    """
    if isinstance(tokenizer, ClipBPETokenizer):
        enc = tokenizer(list(texts))
    else:
        enc = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"].bool()}


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Each text's token count before any truncation, special tokens included."""
    if isinstance(tokenizer, ClipBPETokenizer):
        return tokenizer.count(texts)
    return [len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]]
