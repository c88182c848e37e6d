"""The learning rate a stage trains at is the one its grid gives: MMEngine's own schedulers, built
from each written ``config.py`` and stepped as its ParamSchedulerHook steps them, replayed over a
dummy optimizer for every ``warmup_iters`` and stage length."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from prunebench.sweep import prepare

GRID = """\
name: sched
backbone: {{embed_dim: 32, depth: 2, num_heads: 2, prune_layers: [1], keep_ratios: [0.5]}}
data: {{type: synthetic, num_train: 4, num_val: 2, image_size: [64, 64], num_classes: 2, cache_dir: {cache}}}
schedule:
  dense: {{{dense}}}
  finetune: {{{finetune}}}
axes: {{pruned_tokens: [preserve], reactivation: [false], rate: [dynamic], selector: [mlp]}}
"""


def written_configs(tmp_path: Path, dense: str, finetune: str) -> tuple[Config, Config]:
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(cache=tmp_path / "cache", dense=dense, finetune=finetune))
    sweep = prepare(path, tmp_path / "results")
    return tuple(Config.fromfile(str(sweep.sweep_dir / s.run_id / "config.py")) for s in sweep.runs)


def replay(cfg: Config, epoch_length: int = 1) -> list[float]:
    """The lr of every training iteration: MMEngine's schedulers from ``cfg.param_scheduler``
    stepped after each iteration (``by_epoch=False``) and after each epoch (``by_epoch=True``)."""
    import mmengine.optim  # noqa: F401  (registers the schedulers)
    from mmengine.registry import PARAM_SCHEDULERS

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer)) for s in cfg.param_scheduler]
    epochs = cfg.train_cfg.get("max_epochs", 1)
    iters = cfg.train_cfg.get("max_iters", epoch_length)
    lrs = []
    for _ in range(epochs):
        for _ in range(iters):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # (no gradient: changes nothing) in the order MMEngine's loop keeps
            for s in schedulers:
                if not s.by_epoch:
                    s.step()
        for s in schedulers:
            if s.by_epoch:
                s.step()
    return lrs


def check_stage(lrs: list[float], lr: float, warmup: int, milestones: list[int], per_step: int = 1) -> None:
    """Warm-up from lr/1000 over ``warmup`` iterations, the grid's lr at iteration ``warmup``, then
    10x lower from each milestone (in steps of ``per_step`` iterations)."""
    assert lrs[0] == pytest.approx(lr / 1000 if warmup else lr)
    assert lrs[warmup] == pytest.approx(lr)
    assert all(x < lr for x in lrs[:warmup])
    bounds = [0, *(m * per_step for m in milestones), len(lrs)]
    for k, (start, end) in enumerate(zip(bounds, bounds[1:])):
        assert lrs[max(start, warmup) : end] == pytest.approx([lr * 0.1**k] * (end - max(start, warmup)))


@pytest.mark.parametrize("warmup", [0, 1, 2, None])
def test_iteration_stages_train_at_the_grids_lr_after_warmup(tmp_path, warmup):
    extra = "" if warmup is None else f", warmup_iters: {warmup}"
    dense, finetune = written_configs(
        tmp_path, f"iters: 10, lr: 0.0002{extra}", f"iters: 16, lr: 0.0001, milestones: [8, 12]{extra}"
    )
    for cfg, lr, length, milestones in ((dense, 2e-4, 10, [8, 9]), (finetune, 1e-4, 16, [8, 12])):
        lrs = replay(cfg)
        assert len(lrs) == length
        expected = length // 10 if warmup is None else warmup  # the default: a tenth of the stage
        check_stage(lrs, lr, expected, milestones)
        warmups = [s for s in cfg.param_scheduler if s["type"] == "LinearLR"]
        assert len(warmups) == (expected > 0)  # warmup_iters 0: no warm-up scheduler at all


def test_epoch_stage_warms_up_by_iteration_and_steps_by_epoch(tmp_path):
    dense, _ = written_configs(
        tmp_path, "epochs: 4, lr: 0.0002, milestones: [3], warmup_iters: 3", "epochs: 2"
    )
    lrs = replay(dense, epoch_length=5)
    assert len(lrs) == 20
    check_stage(lrs, 2e-4, 3, [3], per_step=5)
