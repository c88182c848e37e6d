"""DynamicViT's teacher distillation for a detector's pruned backbone, the dense parent as teacher.

DynamicViT (Rao et al., NeurIPS 2021; raoyongming/DynamicViT, ``losses.py``) adds two terms with
weight 0.5 each: the student's final tokens against the teacher's at the tokens the student kept
(mean squared error, its ``mse_token`` form) and the student's prediction against the teacher's
(KL divergence of class logits). A detection backbone has no class logits; its prediction is the
feature pyramid, so the second term is the mean squared error of the backbone's output maps.

The teacher is the dense parent: a dense copy of the student's backbone configuration whose
weights are read from the dense run's checkpoint (``backbone.*`` of its ``state_dict``) on first
use, frozen, in eval mode and kept out of the detector's modules (not in its checkpoints, its
optimizer or DDP).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Distiller", "DISTILL_WEIGHT"]

#: DynamicViT's ``distill_weight``.
DISTILL_WEIGHT = 0.5


class Distiller:
    """The teacher terms for a student backbone built from ``backbone`` (its config dict)."""

    def __init__(self, backbone: dict, teacher: str, weight: float = DISTILL_WEIGHT):
        self.cfg = {
            **copy.deepcopy(backbone),
            "prune_layers": [],
            "keep_ratios": [],
            "method": "selector",
            "pretrained": None,
        }
        self.checkpoint, self.weight = str(teacher), float(weight)
        self._teacher: Optional[nn.Module] = None

    def teacher(self, device: torch.device) -> nn.Module:
        """The frozen dense backbone (built and loaded on first use)."""
        if self._teacher is None:
            from mmdet.registry import MODELS

            model = MODELS.build(self.cfg)
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            weights = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
            if not weights:
                raise ValueError(
                    f"{self.checkpoint}: no backbone.* tensors; the teacher must be the dense parent's "
                    "MMEngine checkpoint (its run folder's work_dir/epoch_*.pth or iter_*.pth)"
                )
            model.load_state_dict(weights, strict=True)
            self._teacher = model.eval().requires_grad_(False)
        return self._teacher.to(device)

    def losses(self, student: nn.Module, maps: tuple[torch.Tensor, ...], img: torch.Tensor) -> dict:
        """``loss_distill_token`` and ``loss_distill_maps`` of the last student forward
        (``maps``: its outputs on ``img``)."""
        teacher = self.teacher(img.device)
        with torch.no_grad():
            t_maps = teacher(img)
        kept = student.keep
        kept = torch.ones_like(student.last_tokens[..., 0]) if kept is None else (kept.detach() > 0.5).float()
        err = (student.last_tokens - teacher.last_tokens).pow(2).mean(dim=-1)
        token = (err * kept).sum() / kept.sum().clamp_min(1)
        out = torch.stack([F.mse_loss(s, t) for s, t in zip(maps, t_maps)]).mean()
        return {"loss_distill_token": self.weight * token, "loss_distill_maps": self.weight * out}
