"""The backbone settings of an official uzh-rpg/svit checkpoint: from the training config it carries
(``meta.config``, mmcv's text of it, read as literals and never executed), else from its weights
with the released models' pruning schedule. The official SViT code prunes every block from the 4th
on (``selective_modules[i - 3]``, ``keep_ratio[i - 3]``: reactivation), or with ``inherit_mask``
holds the decisions of selectors before blocks 4, 7 and 10 for their stage; both hard-coded there.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from ..axes import ARCHS, FAMILY_ARGS, REFERENCE_RATIOS, id_prefix

__all__ = ["ConversionError", "backbone_settings", "backbone_cell", "check_arch", "training_config"]

DENSE_TYPE, SVIT_TYPE = "ViTAdapter", "SelectiveViTAdapter"
#: the first block the official SViT code prunes (``n_skip = 3``, hard-coded there).
FIRST_PRUNED = 3
WIDTH_KEY = "backbone.patch_embed.proj.weight"


class ConversionError(ValueError):
    """A checkpoint that does not convert or load; the message names the file, the keys and the fix."""


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
    width = int(state[WIDTH_KEY].shape[0])
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
    width = int(state[WIDTH_KEY].shape[0]) if WIDTH_KEY in state else None
    if width is not None and arch in ARCHS and ARCHS[arch][0] != width:
        found = _arch_of_width(width)
        fix = f"pass --arch {found} or leave --arch out" if found else "leave --arch out"
        raise ConversionError(
            f"{path}: a {found or f'{width}-wide ViT'} checkpoint ({WIDTH_KEY}: {width} channels), not "
            f"{arch} ({ARCHS[arch][0]}). Fix: {fix}"
        )


def backbone_settings(state: dict, meta: dict, path: Path) -> tuple[dict, str]:
    """A run's backbone arguments for the checkpoint (``family: adapter`` and PrunedViTAdapter's
    keyword arguments) and where they come from."""
    official = (training_config(meta) or {}).get("backbone")
    if isinstance(official, dict):
        return {"family": "adapter", **_from_config(official, state, path)}, "meta.config"
    source = "the weights, with the released models' pruning schedule"
    return {"family": "adapter", **_from_weights(state, path)}, source
