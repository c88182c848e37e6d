"""Official uzh-rpg/svit checkpoints -> prunebench's tensor names and backbone settings.

An official checkpoint is an mmcv 1.x runner file, ``{'meta': {..., 'CLASSES', 'config',
'exp_name'}, 'state_dict': {...}, 'optimizer': ...}``, of an MMDetection 2 Mask R-CNN whose
backbone is ``ViTAdapter`` (dense) or ``SelectiveViTAdapter`` (SViT). MMDetection 2 and 3 name the
neck, RPN and RoI heads of Mask R-CNN alike; the backbone needs:

* ``pos_embed`` (1, 1 + g*g, C): its class slot is cut (the adapter never reads it);
* SViT blocks, named as the official ``change_key_name.py`` renames timm's (PyTorch's
  ``nn.TransformerEncoderLayer``), back in timm's layout: ``self_attn.in_proj_*`` -> ``attn.qkv.*``
  (the same q, k, v row order), ``self_attn.out_proj`` -> ``attn.proj``, ``linear1/2`` ->
  ``mlp.fc1/2``; ``norm1/2`` keep their names;
* ``selective_modules.N.{norm, mlp.fc1, mlp.fc2}`` -> ``selectors.N.{norm, fc1, fc2}``, marked
  trained (their ``calibrated`` buffer), so nothing re-initialises them on a first batch;
* a ``cls_token`` is ignored; the optimizer state is dropped.

The backbone's settings (arch, pruning cell, prune layers, keep ratios): :mod:`.official_settings`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..zoo import identify
from .official_settings import WIDTH_KEY, ConversionError, backbone_cell, backbone_settings, check_arch

__all__ = ["ConversionError", "Converted", "check_arch", "check_keys", "convert_official", "mark_trained"]

#: official SViT block names (under ``TransformerEncoderLayer.``) -> timm's, by prefix.
BLOCK_NAMES = {
    "self_attn.in_proj_": "attn.qkv.",
    "self_attn.out_proj.": "attn.proj.",
    "linear1.": "mlp.fc1.",
    "linear2.": "mlp.fc2.",
    "norm1.": "norm1.",
    "norm2.": "norm2.",
}
#: official selector names (``selective_modules.N.``) -> prunebench's (``selectors.N.``), by prefix.
SELECTOR_NAMES = {"norm.": "norm.", "mlp.fc1.": "fc1.", "mlp.fc2.": "fc2."}
IGNORED = ("backbone.cls_token",)
_BLOCK = re.compile(r"backbone\.blocks\.(\d+)\.TransformerEncoderLayer\.(.+)")
_SELECTOR = re.compile(r"backbone\.selective_modules\.(\d+)\.(.+)")
_CLASSES_KEY = "roi_head.bbox_head.fc_cls.weight"


@dataclass
class Converted:
    """An official checkpoint in prunebench's names, with what an MMEngine checkpoint's ``meta``
    holds (``dataset_meta.classes`` and the ``prunebench`` record of the backbone it needs)."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    ignored: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def record(self) -> dict[str, Any]:
        return self.meta["prunebench"]


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """``(state_dict, meta, other top-level entries)`` of an mmcv 1.x runner checkpoint, loaded with
    ``weights_only=True``. Raises ConversionError naming the file."""
    from ..checkpoint import allow_mmengine_checkpoints

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConversionError(
            f"{path}: no such file. Fix: download the checkpoint (`prunebench zoo` lists the released ones)"
        )
    allow_mmengine_checkpoints()
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise ConversionError(
            f"{path}: not a checkpoint torch.load reads with weights_only=True ({type(e).__name__}: "
            f"{first}). Fix: pass the .pth file the official README links (`prunebench zoo`)"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        have = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(
            f"{path}: expected an MMDetection checkpoint {{'meta': ..., 'state_dict': ...}}, found "
            f"{have}. Fix: pass a checkpoint saved by MMDetection's runner (`prunebench zoo`)"
        )
    state = {k.removeprefix("module."): v for k, v in obj["state_dict"].items()}
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    return state, meta, [k for k in obj if k not in ("state_dict", "meta")]


# --- tensors --------------------------------------------------------------------------------


def _rename(key: str) -> str:
    """prunebench's name of an official key (unknown keys keep theirs and show up as left over)."""
    for pattern, names, prefix in ((_BLOCK, BLOCK_NAMES, "blocks"), (_SELECTOR, SELECTOR_NAMES, "selectors")):
        m = pattern.fullmatch(key)
        if m:
            index, rest = m.groups()
            for old, new in names.items():
                if rest.startswith(old):
                    return f"backbone.{prefix}.{index}.{new}{rest[len(old) :]}"
    return key


def mark_trained(state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> dict:
    """``state`` with every selector of the model marked trained (its ``calibrated`` buffer True),
    so that no first-batch initialisation runs on converted selectors."""
    flags = {
        k: torch.tensor(True) for k in model_state if re.fullmatch(r"backbone\.selectors\.\d+\.calibrated", k)
    }
    return {**state, **flags}


def check_keys(found: dict, expected: dict, path: str | Path, fix: str) -> None:
    """ConversionError listing (first 10 of each) the keys of ``expected`` that ``found`` lacks,
    those it has in excess and those of another shape."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [
        f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)} in the model"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        f"{len(keys)} {label}: {', '.join(keys[:10])}{', ...' if len(keys) > 10 else ''}"
        for label, keys in (("missing", missing), ("left over", extra), ("of the wrong shape", wrong))
        if keys
    ]
    if problems:
        raise ConversionError(f"{path}: does not fit the model: {'; '.join(problems)}. Fix: {fix}")


def convert_official(path: str | Path, arch: str | None = None) -> Converted:
    """An official ViT-Adapter / SViT-Adapter Mask R-CNN checkpoint in prunebench's names, with
    the backbone settings it needs. ``arch``: the arch the caller expects (an error names the
    checkpoint's when it differs)."""
    path = Path(path)
    state, meta, others = read_official(path)
    if WIDTH_KEY not in state or _CLASSES_KEY not in state:
        raise ConversionError(
            f"{path}: no {WIDTH_KEY if WIDTH_KEY not in state else _CLASSES_KEY}: not a ViT-Adapter Mask "
            "R-CNN checkpoint. Fix: convert one of the released models (`prunebench zoo`)"
        )
    if arch is not None:
        check_arch(state, arch, path)
    args, source = backbone_settings(state, meta, path)
    grid = args.get("pretrain_img_size", 224) // args.get("patch_size", 16)
    out, ignored = {}, []
    for key, value in state.items():
        if key in IGNORED:
            ignored.append(key)
            continue
        if key == "backbone.pos_embed" and value.shape[1] == grid * grid + 1:
            value = value[:, 1:]  # the class slot
        out[_rename(key)] = value
    classes = [str(c) for c in meta.get("CLASSES") or ()]
    num_classes = int(state[_CLASSES_KEY].shape[0]) - 1
    if classes and len(classes) != num_classes:
        raise ConversionError(
            f"{path}: meta.CLASSES names {len(classes)} classes but {_CLASSES_KEY} scores {num_classes}"
        )
    released = identify(path.name, meta.get("exp_name"))
    cell = backbone_cell(args)
    if released and ((released.arch, released.cell) != (args["arch"], cell) or "embed_dim" in args):
        released = None  # named like a released file, but another model
    record = {
        "backbone": args,
        "cell": cell,
        "num_classes": num_classes,
        "zoo": released.name if released else None,
        "settings_from": source,
        "converted_from": {
            "file": path.name,
            "format": "mmcv 1.x runner (MMDetection 2)",
            **{k: meta[k] for k in ("exp_name", "mmdet_version", "epoch", "iter") if k in meta},
        },
    }
    new_meta = {"dataset_meta": {"classes": classes} if classes else {}, "prunebench": record}
    return Converted(out, new_meta, ignored, others)
