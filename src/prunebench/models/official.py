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

The backbone's settings (arch, pruning cell, prune layers, keep ratios) come from the training
config the checkpoint carries (``meta.config``, read as literals, never executed), else from the
weights with the released models' pruning schedule.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..axes import ARCHS, FAMILY_ARGS, REFERENCE_RATIOS, id_prefix
from ..zoo import identify

__all__ = [
    "ConversionError",
    "Converted",
    "backbone_cell",
    "check_arch",
    "check_keys",
    "convert_official",
    "mark_trained",
    "read_official",
    "training_config",
]

DENSE_TYPE, SVIT_TYPE = "ViTAdapter", "SelectiveViTAdapter"
#: the first block the official SViT code prunes (``n_skip = 3``, hard-coded there).
FIRST_PRUNED = 3
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
_WIDTH_KEY = "backbone.patch_embed.proj.weight"
_CLASSES_KEY = "roi_head.bbox_head.fc_cls.weight"


class ConversionError(ValueError):
    """A checkpoint that does not convert or load; the message names the file, the keys and the fix."""


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


# --- the training config in meta.config ----------------------------------------------------

_UNREAD = object()  # a config value that is not a literal


def _literal(node: ast.AST) -> Any:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
    ):
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return _UNREAD


def training_config(meta: dict) -> dict | None:
    """``model`` of the training config an official checkpoint carries (``meta.config``, the
    config's text as mmcv prints it), its literal values only; None without one."""
    text = meta.get("config")
    if not isinstance(text, str):
        return None
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "model" for t in node.targets
        ):
            model = _literal(node.value)
            return model if isinstance(model, dict) else None
    return None


# --- backbone settings ----------------------------------------------------------------------


def _arch_of_width(width: int) -> str | None:
    return next((a for a, (d, _, _) in ARCHS.items() if d == width), None)


def _dims(path: Path, embed_dim: int, depth: int, num_heads: int | None) -> dict:
    """``arch`` (plus explicit dimensions where they are no DeiT's)."""
    same_width = _arch_of_width(embed_dim)
    if num_heads is None:
        if same_width is None:
            raise ConversionError(
                f"{path}: a {embed_dim}-wide ViT is no DeiT and meta.config does not give its num_heads. "
                "Fix: convert a checkpoint that carries its training config"
            )
        num_heads = ARCHS[same_width][2]
    exact = next((a for a, dims in ARCHS.items() if dims == (embed_dim, depth, num_heads)), None)
    if exact:
        return {"arch": exact}
    return {
        "arch": same_width or "deit-small",
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
    }


def _weights_dims(state: dict) -> tuple[int, int]:
    width = int(state[_WIDTH_KEY].shape[0])
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("backbone.blocks."))
    return width, depth


def _schedule(cfg: dict, depth: int, path: Path) -> dict:
    """The pruning arguments of an official ``SelectiveViTAdapter`` config."""
    if cfg.get("version", 0) != 0 or cfg.get("last_version") not in (None, 0):
        raise ConversionError(
            f"{path}: meta.config: selector version {cfg.get('version')!r} / last_version "
            f"{cfg.get('last_version')!r}; only version 0 (no class token, as released) converts"
        )
    ratios = cfg.get("keep_ratio")
    if not isinstance(ratios, list) or not all(isinstance(r, (int, float)) for r in ratios):
        raise ConversionError(f"{path}: meta.config: backbone.keep_ratio {ratios!r} is not a list of numbers")
    layers = list(range(FIRST_PRUNED, depth))
    if cfg.get("inherit_mask"):  # selectors before blocks 4, 7, 10 (hard-coded), each held for its stage
        if depth != 12 or len(ratios) != 3:
            raise ConversionError(
                f"{path}: meta.config: inherit_mask needs 12 blocks and 3 keep ratios (the official code "
                f"hard-codes selectors before blocks 4, 7, 10); got {depth} blocks, keep_ratio {ratios}"
            )
        keep, reactivation = [float(r) for r in ratios for _ in range(3)], False
    else:  # selective_modules[i - 3] and keep_ratio[i - 3] before every block i >= 3
        if len(ratios) != len(layers):
            raise ConversionError(
                f"{path}: meta.config: keep_ratio has {len(ratios)} values, but the official code prunes "
                f"blocks 4..{depth} with keep_ratio[i - 3] ({len(layers)} values)"
            )
        keep, reactivation = [float(r) for r in ratios], True
    return dict(
        prune_layers=layers,
        keep_ratios=keep,
        pruned_tokens="preserve",
        reactivation=reactivation,
        rate="fixed" if cfg.get("ratio_per_sample") else "dynamic",
        selector="mlp",
    )


def _from_config(cfg: dict, state: dict, path: Path) -> dict:
    kind = cfg.get("type")
    if kind not in (DENSE_TYPE, SVIT_TYPE):
        raise ConversionError(
            f"{path}: meta.config builds a {kind!r} backbone. Fix: convert an official {DENSE_TYPE} or "
            f"{SVIT_TYPE} Mask R-CNN checkpoint (`prunebench zoo`)"
        )
    windows = cfg.get("window_attn")
    unsupported = [
        name
        for name, bad in (
            ("window_attn", isinstance(windows, list) and any(windows)),
            ("layer_scale", bool(cfg.get("layer_scale"))),
            ("with_cffn=False", cfg.get("with_cffn", True) is False),
        )
        if bad
    ]
    if unsupported:
        raise ConversionError(
            f"{path}: meta.config: backbone uses {', '.join(unsupported)}, which PrunedViTAdapter does "
            "not have (token pruning needs global attention)"
        )
    width, depth = _weights_dims(state)
    given = [cfg.get(k) for k in ("embed_dim", "depth", "num_heads")]
    embed_dim, depth, heads = (
        int(v) if isinstance(v, int) else d for v, d in zip(given, (width, depth, None))
    )
    args = _dims(path, embed_dim, depth, heads)
    for key in FAMILY_ARGS["adapter"]:
        if key in cfg and cfg[key] is not _UNREAD:
            args[key] = cfg[key]
    for official, ours, default in (
        ("pretrain_size", "pretrain_img_size", 224),
        ("patch_size", "patch_size", 16),
    ):
        if cfg.get(official, default) != default:
            args[ours] = cfg[official]
    if cfg.get("mlp_ratio", 4) != 4:
        args["mlp_ratio"] = float(cfg["mlp_ratio"])
    if kind == SVIT_TYPE:
        args.update(_schedule(cfg, depth, path))
    return args


def _from_weights(state: dict, path: Path) -> dict:
    width, depth = _weights_dims(state)
    args = _dims(path, width, depth, None)
    selectors = {k.split(".")[2] for k in state if k.startswith("backbone.selective_modules.")}
    if not selectors:
        return args
    if depth != 12 or len(selectors) not in (9, 3):
        raise ConversionError(
            f"{path}: {len(selectors)} selectors in a {depth}-block ViT and no meta.config: the pruning "
            "schedule is known only for the released 12-block cells (9 or 3 selectors). Fix: convert a "
            "checkpoint that carries its training config"
        )
    ratios = REFERENCE_RATIOS if len(selectors) == 9 else REFERENCE_RATIOS[::3]
    return {**args, **_schedule(dict(keep_ratio=list(ratios), inherit_mask=len(selectors) == 3), depth, path)}


def backbone_cell(args: dict) -> str:
    """``dense`` or the pruned cell's run-id prefix (``preserve-react-dyn-mlp``)."""
    if not args.get("prune_layers"):
        return "dense"
    return id_prefix({k: args[k] for k in ("pruned_tokens", "reactivation", "rate", "selector")})


def check_arch(state: dict, arch: str, path: str | Path) -> None:
    """ConversionError when the checkpoint's ViT is not ``arch``'s width, naming both."""
    width = int(state[_WIDTH_KEY].shape[0]) if _WIDTH_KEY in state else None
    if width is not None and arch in ARCHS and ARCHS[arch][0] != width:
        found = _arch_of_width(width)
        fix = f"pass --arch {found} or leave --arch out" if found else "leave --arch out"
        raise ConversionError(
            f"{path}: a {found or f'{width}-wide ViT'} checkpoint ({_WIDTH_KEY}: {width} channels), not "
            f"{arch} ({ARCHS[arch][0]}). Fix: {fix}"
        )


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
    if _WIDTH_KEY not in state or _CLASSES_KEY not in state:
        raise ConversionError(
            f"{path}: no {_WIDTH_KEY if _WIDTH_KEY not in state else _CLASSES_KEY}: not a ViT-Adapter Mask "
            "R-CNN checkpoint. Fix: convert one of the released models (`prunebench zoo`)"
        )
    if arch is not None:
        check_arch(state, arch, path)
    official = (training_config(meta) or {}).get("backbone")
    if isinstance(official, dict):
        args, source = _from_config(official, state, path), "meta.config"
    else:
        args, source = _from_weights(state, path), "the weights, with the released models' pruning schedule"
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
        "family": "adapter",
        "backbone": {"type": "PrunedViTAdapter", **args},
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
