"""Learning-rate schedules that recipes can name by ``class_path``, and the optimizer's fit to the precision.

``VideoQAModel`` steps its scheduler after every optimizer step, so the
lengths below are in optimizer steps.
"""

from __future__ import annotations

import inspect

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class LinearWarmupDecay(LambdaLR):
    """Linear warm-up from 0 to the base rate over ``warmup_steps``, then linear decay to 0 at ``total_steps``.

    The schedule VideoDistill uses (Appendix B: "linear decay learning rate
    schedule with a warm-up strategy"). ``warmup_steps`` may also be given as a
    fraction of ``total_steps`` (a float below 1).

    Args:
        optimizer: the wrapped optimizer.
        total_steps: steps at which the rate reaches 0 (it stays 0 after).
        warmup_steps: steps (int) or fraction of ``total_steps`` (float < 1) of warm-up.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: float = 0.1) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        warm = int(warmup_steps * total_steps) if isinstance(warmup_steps, float) and warmup_steps < 1 else int(warmup_steps)
        if not 0 <= warm <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
        self.total_steps, self.warmup_steps = total_steps, warm

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total_steps - step) / max(1, total_steps - warm))

        super().__init__(optimizer, factor)


def optimizer_for_precision(optimizer: Optimizer, precision: str, clip_val: float | None) -> Optimizer:
    """The optimizer to train with under ``precision``: a fused one is rebuilt as ``foreach`` where it must be.

    Under ``16-mixed`` a gradient scaler multiplies the loss; a fused optimizer divides the scale out
    inside its own ``step``, so gradient clipping before the step would clip scaled gradients
    (Lightning refuses the combination). With clipping on, the optimizer is rebuilt with the same
    arguments and ``fused=False, foreach=True`` (one multi-tensor kernel per step, the next fastest).
    ``bf16-mixed`` needs no scaler: a fused optimizer is kept and clipping works unchanged
    (see :meth:`VideoQAModel.configure_gradient_clipping`). Every other case is returned as it is.
    """
    if not (precision.startswith("16") and clip_val and optimizer.defaults.get("fused")):
        return optimizer
    switch = {"fused": False, "foreach": True}
    accepted = inspect.signature(type(optimizer)).parameters
    defaults = {k: v for k, v in {**optimizer.defaults, **switch}.items() if k in accepted}
    return type(optimizer)([{**group, **switch} for group in optimizer.param_groups], **defaults)


def clip_gradients(module, optimizer: Optimizer, gradient_clip_val: float | None, gradient_clip_algorithm: str | None) -> None:
    """Clip as Lightning does, also for a fused optimizer under ``bf16-mixed``
    (``VideoQAModel.configure_gradient_clipping``).

    Lightning's mixed-precision plugin refuses to clip for any optimizer that could unscale
    gradients inside its step, but only ``16-mixed`` has a scaler: under ``bf16-mixed`` the
    gradients are the true ones and the ordinary clipping is exact.
    """
    from lightning.pytorch import LightningModule
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType

    plugin = module.trainer.precision_plugin
    if gradient_clip_val and getattr(plugin, "scaler", True) is None:
        Precision.clip_gradients(plugin, optimizer, gradient_clip_val, gradient_clip_algorithm or GradClipAlgorithmType.NORM)
    else:
        LightningModule.configure_gradient_clipping(module, optimizer, gradient_clip_val, gradient_clip_algorithm)
