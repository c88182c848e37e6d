"""ImageNet ViT checkpoints -> the ViT weights of PrunedViT and PrunedViTAdapter.

Accepted files: the official DeiT / DeiT-III releases (``{'model': state_dict}``; DeiT-III's
``gamma_1`` / ``gamma_2`` are LayerScale's ``ls1.gamma`` / ``ls2.gamma``), MAE's (``{'model':
...}``), DINOv2's (a plain state dict, patch 14, LayerScale, ``mask_token``), a plain timm state
dict (``.pth`` / ``.bin``, possibly under ``state_dict``; AugReg, DeiT-III, DINOv2 as timm names
them) and ``.safetensors`` as timm's hub files are stored. The conversion drops the class /
distillation / register / mask tokens and the classification heads, cuts their slots off
``pos_embed`` and interpolates it when the pretraining grid differs from the model's, and resizes
a patch kernel of another size (DINOv2's 14) to the model's 16 (bilinear, as ViT-Adapter's
``convert_14to16.py``). Every ViT tensor of the model (patch embedding, ``pos_embed``, blocks,
PrunedViT's final norm) must come from the file with the same shape, except a final norm that a
global-pool checkpoint (MAE fine-tuned) does not have; the modules the model names in ``FRESH``
(pyramid or adapter, selectors) start fresh. Errors name the file, the key and what the file holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["WeightsError", "LoadReport", "read_state_dict", "convert_deit", "describe", "load_pretrained"]

_PREFIX_TOKENS = ("cls_token", "dist_token", "reg_token", "register_tokens", "mask_token")
_HEADS = ("head.", "head_dist.", "fc_norm.")
#: DeiT-III's official names of LayerScale -> timm's.
_RENAMES = ((".gamma_1", ".ls1.gamma"), (".gamma_2", ".ls2.gamma"))
#: model tensors a file may lack: the final norm of global-pool checkpoints (MAE fine-tuned).
_OPTIONAL = ("norm.weight", "norm.bias")


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


def describe(state: dict[str, torch.Tensor]) -> str:
    """What a state dict holds, in words: a detector's checkpoint, or a ViT's width, depth, patch
    size, LayerScale and tokens (for error messages)."""
    prefixes = sorted({k.split(".")[0] for k in state if "." in k})
    if "patch_embed.proj.weight" not in state:
        return f"no ViT patch embedding; its top-level modules: {', '.join(prefixes[:8]) or 'none'}"
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    extras = [name for name in ("cls_token", "dist_token", "mask_token", "reg_token") if name in state]
    layer_scale = any(k.endswith((".ls1.gamma", ".gamma_1")) for k in state)
    return (
        f"a ViT of width {width}, {depth} blocks, patch {patch}"
        f"{', LayerScale' if layer_scale else ''}{', ' + ', '.join(extras) if extras else ''}"
    )


def _resize_patch_kernel(weight: torch.Tensor, size: int) -> tuple[torch.Tensor, str]:
    """A patch embedding kernel resized to ``size`` x ``size`` (bilinear, as ViT-Adapter's
    DINOv2 conversion)."""
    old = weight.shape[-1]
    weight = F.interpolate(weight.float(), size=(size, size), mode="bilinear", align_corners=False)
    return weight, f"patch kernel resized {old}x{old} -> {size}x{size}"


def convert_deit(
    state: dict[str, torch.Tensor],
    model_state: dict[str, torch.Tensor],
    grid: int,
    path: str = "",
    fresh: tuple[str, ...] = ("pyramid.", "selectors."),
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map a ViT checkpoint's state dict onto a pruned backbone's keys; every model key not under
    a ``fresh`` prefix must come from the file. Raises WeightsError on a mismatch."""
    report = LoadReport(path=path)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in _RENAMES:
            key = key.replace(old, new) if key.startswith("blocks.") else key
        if key in _PREFIX_TOKENS or key.startswith(_HEADS) or key not in model_state:
            if key.startswith("blocks."):
                raise WeightsError(
                    f"{path}: {key} has no place in the model (the file holds {describe(state)}). "
                    "Fix: a file with LayerScale (DeiT-III, DINOv2) needs backbone.layer_scale "
                    "(e.g. 1e-6) or a dinov2-* arch; otherwise use the checkpoint of backbone.arch"
                )
            report.ignored.append(key)
            continue
        if key == "pos_embed":
            value, note = _resize_pos_embed(value, grid, tuple(model_state[key].shape))
            if note:
                report.notes.append(note)
        shape = model_state[key].shape
        if key == "patch_embed.proj.weight" and value.shape[:2] == shape[:2] and value.shape != shape:
            value, note = _resize_patch_kernel(value, shape[-1])
            report.notes.append(note)
        if tuple(value.shape) != tuple(model_state[key].shape):
            raise WeightsError(
                f"{path}: {key}: shape {tuple(value.shape)} in the file vs "
                f"{tuple(model_state[key].shape)} in the model (the file holds {describe(state)}). "
                "Fix: the file is for another architecture; use the checkpoint matching backbone.arch"
            )
        out[key] = value.to(model_state[key].dtype)
        report.loaded.append(key)
    vit_keys = [k for k in model_state if not k.startswith(fresh)]
    missing = [k for k in vit_keys if k not in out and k not in _OPTIONAL]
    if missing:
        raise WeightsError(
            f"{path}: {len(missing)} ViT tensors of the model are not in the file "
            f"(e.g. {', '.join(missing[:4])}; the file holds {describe(state)}). Fix: use an "
            "ImageNet ViT checkpoint of backbone.arch (DeiT / DeiT-III / MAE .pth, DINOv2 .pth, "
            "timm .pth/.bin or .safetensors)"
        )
    if any(k in model_state and k not in out for k in _OPTIONAL):
        report.notes.append("no final norm in the file (a global-pool checkpoint): norm starts fresh")
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
