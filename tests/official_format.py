"""Checkpoints in the official uzh-rpg/svit format, made from prunebench models for the conversion
tests: mmcv 1.x runner layout (``meta`` with ``CLASSES``, ``config``, ``exp_name``; ``state_dict``;
``optimizer``), the official key names and shapes.

The SViT block names come from the official ``change_key_name.py`` rules, applied as mmcv's
``revise_keys`` applies them (regex substitutions in order); the selector names from the official
``SelectiveModule`` (``norm``, ``mlp.fc1``, ``mlp.fc2``). This is deliberately not prunebench's
conversion table, so that the round trip checks one against the other; the key lists in
``tests/data/official_*_keys.json`` check both against the official models.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from prunebench.convert import build_detector, detector_config

# uzh-rpg/svit change_key_name.py: timm's block names -> the official SViT's
REVISE_KEYS = [
    (r"blocks.\d+.", r"\g<0>TransformerEncoderLayer."),
    ("attn.qkv.weight", "self_attn.in_proj_weight"),
    ("attn.qkv.bias", "self_attn.in_proj_bias"),
    ("attn.proj", "self_attn.out_proj"),
    ("mlp.fc1", "linear1"),
    ("mlp.fc2", "linear2"),
]
SLIM = dict(
    embed_dim=96, depth=6, num_heads=3, conv_inplane=16, interaction_indexes=[[0, 1], [2, 3], [4, 4], [5, 5]]
)
#: blocks 4..6 prune, one selector each (the official SViT's rule: block i, selector i - 3)
SLIM_RATIOS = [0.7, 0.5, 0.3]
CLASSES = ["circle", "square", "triangle"]  # the synthetic set's first three
SVIT_CELL = dict(pruned_tokens="preserve", reactivation=True, rate="dynamic", selector="mlp")
#: what convert records for the slim official configs (96 wide: no DeiT, so explicit dimensions)
SLIM_RECORD = {
    "family": "adapter",
    "arch": "deit-small",
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
    "conv_inplane": 16,
    "n_points": 4,
    "deform_num_heads": 6,
    "deform_ratio": 1.0,
    "cffn_ratio": 0.25,
    "interaction_indexes": SLIM["interaction_indexes"],
}
SLIM_SVIT_RECORD = {**SLIM_RECORD, "prune_layers": [3, 4, 5], "keep_ratios": SLIM_RATIOS, **SVIT_CELL}


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, BN statistics and injector gates included; selectors that keep
    some tokens and prune others."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(noise.abs() * 0.5 + 0.5)
            elif name.endswith("gamma") or (".selectors." in name and name.endswith("fc2.weight")):
                t.copy_(noise * 0.5)
            else:
                t.add_(noise * 0.02)
    return model.eval()


def slim_detector(record: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return trained_looking(build_detector(detector_config(record, len(CLASSES))), seed)


def official_backbone_state(state: dict[str, torch.Tensor], svit: bool) -> dict[str, torch.Tensor]:
    """A PrunedViTAdapter state dict (keys without ``backbone.``) in the official names and shapes:
    ``pos_embed`` with a class slot, SViT blocks renamed, selectors as ``selective_modules``."""
    out = {}
    for key, value in state.items():
        if key.endswith(".calibrated"):
            continue  # the official SelectiveModule has no such buffer
        if key == "pos_embed":
            value = torch.cat([torch.full_like(value[:, :1], 0.5), value], dim=1)
        m = re.fullmatch(r"selectors\.(\d+)\.(norm|fc1|fc2)\.(\w+)", key)
        if m:
            index, module, param = m.groups()
            key = f"selective_modules.{index}.{'norm' if module == 'norm' else 'mlp.' + module}.{param}"
        elif svit and key.startswith("blocks."):
            for pattern, repl in REVISE_KEYS:
                key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def official_state(detector_state: dict[str, torch.Tensor], svit: bool) -> dict[str, torch.Tensor]:
    """A prunebench Mask R-CNN state dict in the official detector's names (heads unchanged)."""
    backbone = {
        k.removeprefix("backbone."): v for k, v in detector_state.items() if k.startswith("backbone.")
    }
    heads = {k: v for k, v in detector_state.items() if not k.startswith("backbone.")}
    return {**{f"backbone.{k}": v for k, v in official_backbone_state(backbone, svit).items()}, **heads}


def official_config(backbone: dict, num_classes: int) -> str:
    """A training config's text as mmcv 1.x stores it in ``meta.config`` (``cfg.pretty_text``)."""
    args = ",\n        ".join(f"{k}={v!r}" for k, v in backbone.items())
    width = backbone.get("embed_dim", 384)
    return (
        "model = dict(\n"
        f"    type={'GumbelTwoStageDetector' if backbone['type'] == 'SelectiveViTAdapter' else 'MaskRCNN'!r},\n"
        f"    backbone=dict(\n        {args}),\n"
        f"    neck=dict(type='FPN', in_channels=[{width}, {width}, {width}, {width}], out_channels=256, num_outs=5),\n"
        f"    roi_head=dict(type='StandardRoIHead', bbox_head=dict(type='Shared2FCBBoxHead', num_classes={num_classes})))\n"
        "img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)\n"
        "fp16 = dict(loss_scale=dict(init_scale=512))\n"
        "change_key_name = True\n"
    )


def slim_official_backbone(svit: bool, ratio_per_sample: bool = False) -> dict:
    """The official config's backbone section of a slim (CPU-sized) ViT-Adapter / SViT-Adapter."""
    cfg = dict(
        type="SelectiveViTAdapter" if svit else "ViTAdapter",
        patch_size=16,
        **SLIM,
        mlp_ratio=4,
        drop_path_rate=0.1,
        layer_scale=False,
        n_points=4,
        deform_num_heads=6,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        window_attn=[False] * SLIM["depth"],
        window_size=[None] * SLIM["depth"],
        pretrained=None,
    )
    if svit:
        n = len(SLIM_RATIOS)
        cfg.update(
            select_loc=list(range(4, 4 + n)),
            select_model_id=list(range(n)),
            version=0,
            keep_ratio=SLIM_RATIOS,
            ratio_loss=True,
            ratio_per_sample=ratio_per_sample,
        )
    return cfg


def save_official(
    path: Path,
    state: dict[str, torch.Tensor],
    classes: list[str],
    config: str | None = None,
    exp_name: str | None = None,
) -> Path:
    """Save as mmcv 1.x's runner does (``save_checkpoint``): meta, state_dict, optimizer."""
    meta = {
        "mmcv_version": "1.7.0",
        "mmdet_version": "2.28.1",
        "CLASSES": tuple(classes),
        "seed": 0,
        "epoch": 4,
        "iter": 29316,
        "time": "Sat Apr  1 12:00:00 2023",
        "hook_msgs": {"last_ckpt": "output/svit-s/epoch_4.pth"},
    }
    if config is not None:
        meta["config"] = config
    if exp_name is not None:
        meta["exp_name"] = exp_name
    first = next(iter(state.values()))
    optimizer = {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(first)}},
        "param_groups": [
            {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-6, "params": [0]}
        ],
    }
    torch.save({"meta": meta, "state_dict": dict(state), "optimizer": optimizer}, path)
    return path


def slim_official_file(path: Path, svit: bool, ratio_per_sample: bool = False, seed: int = 0) -> Path:
    """A slim random-weight detector saved in the official format, with its training config."""
    record = dict(SLIM_SVIT_RECORD, rate="fixed" if ratio_per_sample else "dynamic") if svit else SLIM_RECORD
    state = official_state(slim_detector(record, seed).state_dict(), svit)
    text = official_config(slim_official_backbone(svit, ratio_per_sample), len(CLASSES))
    return save_official(path, state, CLASSES, text)
