"""Does the fast test tier notice a part that computes nothing? For every registered part (backbone,
text encoder, sampler, fusion, head, objective), replace its ``forward`` by one whose every floating
tensor is multiplied by zero (same shapes and types, no signal, no gradient), run the fast tier's
tests of that part, and report the parts whose breakage no test caught::

    python experiments/zero_forward.py            # every part; exit status 1 if one goes unnoticed
    python experiments/zero_forward.py fusion     # one kind

Run as a pytest plugin in each child (``-p zero_forward``): ``VQA_ZERO_FORWARD=kind:name`` names the part.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("backbone", "text_encoder", "sampler", "fusion", "head", "objective")
#: parts whose forward is zeros by design: zeroing them changes nothing, and no test can tell
ZEROS_BY_DESIGN = {"backbone:blind": "the question-only baselines' video input"}


def zeroed(value):
    """``value`` with every floating tensor times zero (dataclasses, dicts, lists and tuples kept)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value * 0 if value.is_floating_point() else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            setattr(value, f.name, zeroed(getattr(value, f.name)))
        return value
    if isinstance(value, dict):
        return {k: zeroed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(zeroed(v) for v in value)
    return value


def pytest_configure(config) -> None:
    """The plugin: zero the forward of the part named by ``VQA_ZERO_FORWARD``."""
    kind, _, name = os.environ["VQA_ZERO_FORWARD"].partition(":")
    from vqa_components.registry import REGISTRIES, import_builtin_parts

    import_builtin_parts()
    cls = REGISTRIES[kind].get(name)
    original = cls.forward

    def forward(self, *args, **kwargs):
        return zeroed(original(self, *args, **kwargs))

    cls.forward = forward


def main(kinds: list[str]) -> int:
    from vqa_components.registry import REGISTRIES, import_builtin_parts

    import_builtin_parts()
    unnoticed = []
    for kind in kinds:
        for name in REGISTRIES[kind].names():
            if f"{kind}:{name}" in ZEROS_BY_DESIGN:
                print(f"{kind:13s} {name:24s} zeros by design ({ZEROS_BY_DESIGN[f'{kind}:{name}']})")
                continue
            env = {**os.environ, "VQA_ZERO_FORWARD": f"{kind}:{name}",
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "experiments"), os.environ.get("PYTHONPATH", "")])}
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
                   "tests/test_parts.py", "-k", f"test_{kind} and {name}"]
            control = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)  # the part as it is: passes
            run = subprocess.run([*cmd, "-p", "zero_forward"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            caught = control.returncode == 0 and run.returncode == 1  # a test failed (5: none ran)
            print(f"{kind:13s} {name:24s} {'caught' if caught else f'NOT CAUGHT (exit {run.returncode})'}", flush=True)
            if not caught:
                unnoticed.append(f"{kind}:{name}")
    print("every zeroed part was caught" if not unnoticed else f"not caught: {', '.join(unnoticed)}")
    return 1 if unnoticed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(KINDS)))
