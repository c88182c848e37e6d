"""MMEngine hooks that every run's ``config.py`` names (``custom_hooks``; registered on import, as
its ``custom_imports`` do): ``DivergenceHook`` stops a run whose loss is no longer finite."""

from __future__ import annotations

import math

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


class TrainingDiverged(RuntimeError):
    """The training loss went non-finite: the run is failed, not trained on to the end."""


@HOOKS.register_module()
class DivergenceHook(Hook):
    """Raises :class:`TrainingDiverged` when the loss terms of ``patience`` consecutive iterations
    are not all finite (1: at the first; AMP runs allow a few, as the loss scaler skips such
    steps), naming the iteration, the non-finite terms, the lr and the fix. Runs before the
    checkpoint hook, so no non-finite weights are saved at that iteration."""

    priority = "ABOVE_NORMAL"

    def __init__(self, patience: int = 1):
        self.patience, self._streak = patience, 0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        bad = {
            k: float(v) for k, v in (outputs or {}).items() if _is_number(v) and not math.isfinite(float(v))
        }
        self._streak = self._streak + 1 if bad else 0
        if bad and self._streak >= self.patience:
            lrs = runner.optim_wrapper.get_lr().get("lr", [])
            lr = f" at lr {lrs[0]:.3g}" if lrs else ""
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise TrainingDiverged(
                f"training diverged at iteration {runner.iter + 1} of {runner.max_iters}{lr}: "
                f"non-finite loss terms {terms}. Fix: lower the stage's lr (schedule.dense.lr / "
                "schedule.finetune.lr) or clip gradients (schedule.clip_grad: 1.0), then re-run the sweep"
            )


def _is_number(value) -> bool:
    if hasattr(value, "numel"):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)
