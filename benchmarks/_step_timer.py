"""A callback for ``benchmarks/training_speed.py``: wall time of the training steps after a warm-up.

Given to ``vqa fit`` as ``--trainer.callbacks+={class_path: _step_timer.StepTimer, ...}`` with this
folder on ``PYTHONPATH``. Rank 0 writes ``{"steps", "seconds", "samples"}`` to ``out`` at the end of
training: the steps after ``warmup``, their wall time, and the samples all ranks trained on in them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    def __init__(self, out: str, warmup: int = 5) -> None:
        self.out, self.warmup = out, warmup
        self.start: float | None = None
        self.steps = 0
        self.samples = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        elif self.start is not None:
            self.steps += 1
            self.samples += int(batch["batch_size"]) * trainer.world_size

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and self.start is not None:
            seconds = time.perf_counter() - self.start
            Path(self.out).write_text(json.dumps({"steps": self.steps, "seconds": seconds, "samples": self.samples}))
