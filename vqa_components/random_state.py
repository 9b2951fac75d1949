"""Random states in the checkpoint, so that a resumed run draws what the uninterrupted run drew.

Lightning checkpoints hold the weights, the optimizer, the schedulers and the loops' progress, and
the training loader's order (:mod:`vqa_components.data.data_order`), but not the random number
generators: a resumed run would draw new dropout masks, masking positions and sampler noise.
:class:`RandomStateCheckpoint` (``vqa`` adds it to every run) saves the states of Python's, NumPy's and
torch's generators (CUDA's too where there is a GPU) and puts them back:

- at load, the states as they were when the checkpoint was written;
- for a checkpoint written at the end of an epoch, again when the next epoch starts: the resumed run
  creates the training loader's iterator twice before then (Lightning's restart path), the
  uninterrupted run once, and the next epoch's order is drawn from these states;
- for a checkpoint written in the middle of an epoch, just before the first training batch, the
  states as they were at the end of the last batch trained on: the resumed run creates its loaders
  and may validate first, which the uninterrupted run did not do at that point.

With ``--trainer.deterministic true`` on a CPU, a run interrupted anywhere and resumed with
``--ckpt_path last`` then ends with the same weights, bit for bit, as the run that was not
(``tests/test_resume.py``).
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def capture() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (and every CUDA device's)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain types and tensors only: Lightning loads checkpoints with torch.load(weights_only=True)
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Put back what :func:`capture` returned."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStateCheckpoint(Callback):
    """Saves the generators' states with each checkpoint and restores them on resume (see the module)."""

    def __init__(self) -> None:
        # states after the last batch trained on (ModelCheckpoint runs after every other callback, so a
        # checkpoint written at a batch's end sees this batch's)
        self._after_batch: dict[str, Any] | None = None
        self._loaded: dict[str, Any] | None = None  # what the checkpoint resumed from held
        self._at_epoch_start: dict[str, Any] | None = None  # to restore when the next epoch starts
        self._at_batch_start: dict[str, Any] | None = None  # to restore before the next batch

    @property
    def state_key(self) -> str:
        return "RandomStateCheckpoint"

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._after_batch = capture()

    def state_dict(self) -> dict[str, Any]:
        return {"at_save": capture(), "after_batch": self._after_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore(state_dict["at_save"])
        self._loaded = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loaded is None:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress  # as the checkpoint left it
        if progress.is_last_batch or progress.current.processed == 0:
            # written at an epoch's end: the next epoch's loader draws its order from these states
            # (Lightning creates the loader's iterator again there, as the uninterrupted run does)
            self._at_epoch_start = self._loaded["at_save"]
        else:
            self._at_batch_start = self._loaded["after_batch"]
        self._loaded = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._at_epoch_start is not None:
            restore(self._at_epoch_start)
            self._at_epoch_start = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._at_batch_start is not None:
            restore(self._at_batch_start)
            self._at_batch_start = None
