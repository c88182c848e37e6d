"""A method's own optimisation protocol (``schedule.method_protocol: true``; DynamicViT's, from its
released DeiT scripts: ``optim_factory.py`` and ``engine.py`` of raoyongming/DynamicViT).

* :class:`SelectorLrConstructor` (``optim_wrapper.constructor``): MMEngine's default param groups,
  then the selectors' groups at ``selector_lr_mult`` times their lr (DynamicViT: the backbone at
  ``lr_scale`` 0.01 of the predictors, i.e. the predictors at 100x the grid's lr). Each group is
  tagged ``selector`` (True / False).
* :class:`FrozenStartHook`: every group but the selectors' trains at lr 0 for the first
  ``share`` of the iterations (DynamicViT: 5 of 30 epochs), as DynamicViT sets their lr to 0
  (AdamW then leaves them unchanged; its moments still accumulate, as in DynamicViT). The
  scheduled lr is put back after each iteration, before the schedulers step.
"""

from __future__ import annotations

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.optim import DefaultOptimWrapperConstructor

__all__ = ["SelectorLrConstructor", "FrozenStartHook", "SELECTOR_PREFIX"]

SELECTOR_PREFIX = "selectors."  # the selectors' parameters in a pruned backbone (its FRESH key)


class SelectorLrConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's constructor with ``paramwise_cfg.selector_lr_mult`` (module docstring)."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.selector_lr_mult = float(paramwise_cfg.pop("selector_lr_mult", 1.0))
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module):
        wrapper = super().__call__(model)
        module = getattr(model, "module", model)
        ids = {id(p) for n, p in module.named_parameters() if f"backbone.{SELECTOR_PREFIX}" in n}
        for group in wrapper.optimizer.param_groups:
            group["selector"] = all(id(p) in ids for p in group["params"])
            if group["selector"]:
                group["lr"] *= self.selector_lr_mult
        return wrapper


class FrozenStartHook(Hook):
    """Lr 0 for every non-selector param group in the first ``share`` of the iterations."""

    priority = "NORMAL"  # after_train_iter before the ParamSchedulerHook (LOW) steps

    def __init__(self, share: float):
        self.share = float(share)
        self._saved: list[tuple[dict, float]] = []

    def _frozen(self, runner) -> bool:
        return runner.iter < round(self.share * runner.max_iters)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self._frozen(runner):
            return
        for group in runner.optim_wrapper.optimizer.param_groups:
            if not group.get("selector", False):
                self._saved.append((group, group["lr"]))
                group["lr"] = 0.0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for group, lr in self._saved:
            group["lr"] = lr
        self._saved = []
