"""Building open_clip models: a recipe that asks for random weights hears it once per part, in our
words, and not open_clip's ``No pretrained weights loaded`` warning (``vqa profile``, in this process)."""

from __future__ import annotations

import logging

import yaml
from helpers import run_vqa


def test_random_open_clip_parts_say_so_once_in_our_words_and_open_clip_s_warning_is_filtered(tmp_path, caplog):
    recipe = tmp_path / "random_clip.yaml"
    recipe.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {
            "backbone": {"name": "open_clip", "model_name": "ViT-B-16", "frozen": False, "image_size": 32},
            "text_encoder": {"name": "open_clip", "model_name": "ViT-B-16", "context_length": 16},
            "fusion": {"name": "cross_attention", "video_dim": 512, "text_dim": 512, "dim": 32, "num_layers": 1,
                       "num_heads": 2},
            "head": {"name": "answer_classifier", "in_dim": 32, "num_answers": 16},
            "objectives": [{"name": "answer_cross_entropy"}],
        },
        "data": {"dataset": "synthetic_vqa", "dataset_args": {"num_frames": 2, "frame_size": 32}, "num_workers": 0},
    }))  # fmt: skip
    with caplog.at_level(logging.INFO):
        code, _ = run_vqa("profile", "--config", recipe)
    assert code == 0
    messages = [r.getMessage() for r in caplog.records]
    ours = [m for m in messages if "starts from random weights" in m]
    assert ours == [
        "open_clip backbone: ViT-B-16 starts from random weights (no pretrained, no checkpoint)",
        "open_clip text encoder: ViT-B-16 starts from random weights (no pretrained, no checkpoint)",
    ]
    assert not [m for m in messages if "No pretrained weights loaded" in m]
