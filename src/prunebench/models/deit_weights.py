"""ImageNet DeiT checkpoints -> the ViT weights of PrunedViT and PrunedViTAdapter.

Accepted files: the official DeiT release (``{'model': state_dict}``), a plain timm state dict
(``.pth`` / ``.bin``, possibly under ``state_dict``) and ``.safetensors`` as timm's hub files are
stored. The conversion drops the class/distillation tokens and the classification heads, cuts
their slots off ``pos_embed`` and interpolates it when the pretraining grid differs from the
model's. Every ViT tensor of the model (patch embedding, ``pos_embed``, blocks, PrunedViT's final
norm) must come from the file with the same shape; the modules the model names in ``FRESH``
(pyramid or adapter, selectors) start fresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["WeightsError", "LoadReport", "read_state_dict", "convert_deit", "load_pretrained"]

_PREFIX_TOKENS = ("cls_token", "dist_token", "reg_token")
_HEADS = ("head.", "head_dist.", "fc_norm.")


class WeightsError(ValueError):
    """A checkpoint that cannot initialise the model; the message names the key and the fix."""


@dataclass
class LoadReport:
    """What a checkpoint covered: tensors loaded, left fresh (not in the file) and ignored."""

    path: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One log line: counts, the fresh modules and the ignored keys."""
        fresh_mods = sorted({k.split(".")[0] for k in self.fresh})
        ignored = ", ".join(self.ignored[:6]) + (", ..." if len(self.ignored) > 6 else "")
        notes = f"; {'; '.join(self.notes)}" if self.notes else ""
        return (
            f"loaded {len(self.loaded)} tensors from {self.path}; "
            f"{len(self.fresh)} start fresh ({', '.join(fresh_mods) or 'none'}); "
            f"{len(self.ignored)} ignored ({ignored or 'none'}){notes}"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (official DeiT, timm ``.pth``/``.bin``, safetensors)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"{path}: checkpoint file not found. Fix: download an ImageNet DeiT "
            "checkpoint (see README, 'Pretrained weights') and give its path"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (0 bytes). Fix: download the checkpoint again")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or ["no message"])[0][:200]
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first}). Fix: use "
            "the official DeiT .pth, a timm state dict or a .safetensors file"
        ) from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict (tensor per key) or {{'model': state_dict}}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _resize_pos_embed(pos: torch.Tensor, grid: int, key_shape: tuple) -> tuple[torch.Tensor, str]:
    """Cut prefix-token slots off ``pos`` (1, P+g*g, D) and interpolate it to ``grid`` x ``grid``."""
    n, dim = pos.shape[1], pos.shape[2]
    prefix = next((p for p in (0, 1, 2) if math.isqrt(n - p) ** 2 == n - p), None)
    if prefix is None:
        raise WeightsError(f"pos_embed: {n} slots is not a square grid plus 0-2 prefix tokens")
    g = math.isqrt(n - prefix)
    if dim != key_shape[-1]:
        raise WeightsError(
            f"pos_embed: shape {tuple(pos.shape)} in the file vs {key_shape} in the "
            "model (embedding width differs). Fix: use a checkpoint of the same arch"
        )
    pos = pos[:, prefix:]
    note = f"pos_embed: {prefix} prefix slot(s) cut" if prefix else ""
    if g != grid:
        pos = pos.reshape(1, g, g, dim).permute(0, 3, 1, 2)
        pos = F.interpolate(pos.float(), size=(grid, grid), mode="bicubic", align_corners=False)
        pos = pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
        note += f"{', ' if note else 'pos_embed: '}interpolated {g}x{g} -> {grid}x{grid}"
    return pos, note


def convert_deit(
    state: dict[str, torch.Tensor],
    model_state: dict[str, torch.Tensor],
    grid: int,
    path: str = "",
    fresh: tuple[str, ...] = ("pyramid.", "selectors."),
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map a DeiT/timm state dict onto a pruned backbone's keys; every model key not under a
    ``fresh`` prefix must come from the file. Raises WeightsError on a mismatch."""
    report = LoadReport(path=path)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _PREFIX_TOKENS or key.startswith(_HEADS) or key not in model_state:
            report.ignored.append(key)
            continue
        if key == "pos_embed":
            value, note = _resize_pos_embed(value, grid, tuple(model_state[key].shape))
            if note:
                report.notes.append(note)
        if tuple(value.shape) != tuple(model_state[key].shape):
            raise WeightsError(
                f"{path}: {key}: shape {tuple(value.shape)} in the file vs "
                f"{tuple(model_state[key].shape)} in the model. Fix: the file is for "
                "another architecture; use the checkpoint matching backbone.arch"
            )
        out[key] = value.to(model_state[key].dtype)
        report.loaded.append(key)
    vit_keys = [k for k in model_state if not k.startswith(fresh)]
    missing = [k for k in vit_keys if k not in out]
    if missing:
        raise WeightsError(
            f"{path}: {len(missing)} ViT tensors of the model are not in the file "
            f"(e.g. {', '.join(missing[:4])}). Fix: use an ImageNet DeiT checkpoint "
            "(official DeiT .pth, timm .pth/.bin or .safetensors) of backbone.arch"
        )
    report.fresh = [k for k in model_state if k not in out]
    return out, report


def load_pretrained(model: torch.nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``model``'s ViT from the checkpoint at ``path``; returns what was covered."""
    state = read_state_dict(path)
    model_state = model.state_dict()
    converted, report = convert_deit(state, model_state, model.pretrain_grid, str(path), model.FRESH)
    with torch.no_grad():
        for key, value in converted.items():
            model_state[key].copy_(value)
    return report
