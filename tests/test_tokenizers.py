"""``vqa_components.tokenizers``: CLIP's BPE read without importing open_clip, and usable in another process."""

from __future__ import annotations

import pickle
import subprocess
import sys


def test_clip_bpe_unpickles_in_a_new_process_and_tokenizes_alike(tmp_path):
    """``ddp_spawn`` pickles the model, text encoder and tokenizer included, into processes that start
    from nothing: the tokenizer must not refer to the module copy read without open_clip's package."""
    from vqa_components.tokenizers import ClipBPETokenizer

    tokenizer = ClipBPETokenizer(context_length=16)
    texts = ["what color is the ball?", "how many times does the lamp flash?"]
    expected = tokenizer(texts)["input_ids"].tolist()
    (tmp_path / "tok.pkl").write_bytes(pickle.dumps(tokenizer))
    code = (f"import pickle, sys; t = pickle.load(open({str(tmp_path / 'tok.pkl')!r}, 'rb')); "
            f"print(t({texts!r})['input_ids'].tolist())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(expected)
