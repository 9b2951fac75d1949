"""What the ``vqa`` command (:mod:`vqa_components.cli`) and its Lightning part
(:mod:`vqa_components.lightning_cli`) share: the one-line user error, finding an earlier run's
checkpoint, and telling the launching process from the DDP ranks.

A module of its own so that ``cli`` imports ``lightning_cli`` (only when a Lightning subcommand
runs: ``vqa list`` stays light) and ``lightning_cli`` never imports ``cli``.
"""

from __future__ import annotations

import os
from pathlib import Path


class CLIError(Exception):
    """A user error reported by ``vqa`` as one line (exit status 2)."""


def find_checkpoint(root: str | Path, which: str) -> str:
    """Resolve ``best`` or ``last`` to a checkpoint written by an earlier ``vqa fit``."""
    ckpt_dir = Path(root) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        raise CLIError(
            f"--ckpt_path {which}: no checkpoint in {ckpt_dir}; run `vqa fit` with the same "
            f"trainer.default_root_dir first"
        )
    if which == "last":
        return str(last)
    from vqa_components.weights import read_checkpoint

    state = read_checkpoint(last)
    for key, cb_state in state.get("callbacks", {}).items():
        # ModelCheckpoint's state, or a subclass's (BestCheckpoint): the key starts with the class name
        if isinstance(cb_state, dict) and "Checkpoint" in str(key) and cb_state.get("best_model_path"):
            best = Path(cb_state["best_model_path"])
            if not best.is_absolute():
                best = Path.cwd() / best
            if best.is_file():
                return str(best)
            raise CLIError(f"--ckpt_path best: the best checkpoint recorded in {last} is missing: {best}")
    return str(last)  # no monitored metric: the last checkpoint is the best we know


def is_launching_process() -> bool:
    """Whether this is the process a user started (global rank 0), not one a DDP launcher started.

    Lightning's subprocess launcher re-runs the command line with ``LOCAL_RANK`` (and, on other
    nodes, ``NODE_RANK``) set; ``torchrun`` sets ``RANK`` and ``LOCAL_RANK`` in every process it
    starts, SLURM sets ``SLURM_PROCID``.
    """
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key, "0").strip() or "0"
        if value != "0":
            return False
    return True
