"""A study's dense parent given as a checkpoint: its content hash (a different file is a different
study; hashed once per file version, cached by path, mtime and size) and the check that it fits
the grid's detector, before any job starts. Torch is imported by :func:`check_fits` only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CACHE = "checkpoint-hashes.json"


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes, from the cache when the file's path, mtime and size match."""
    from .data import default_cache_root  # numpy: not for the commands that only read results

    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_mtime_ns}|{st.st_size}"
    cache = default_cache_root() / _CACHE
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    known[key] = digest.hexdigest()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(cache)
    return known[key]


def _describe(state: dict) -> str:
    """Family and width of a detector checkpoint, read from its backbone's keys."""
    family = "adapter" if any(k.startswith("backbone.spm.") for k in state) else "plain"
    proj = state.get("backbone.patch_embed.proj.weight")
    width = f", embed_dim {proj.shape[0]}" if proj is not None else ""
    blocks = {k.split(".")[2] for k in state if k.startswith("backbone.blocks.")}
    return f"{family} backbone{width}, {len(blocks)} blocks"


def check_fits(model_cfg: dict, path: str | Path) -> None:
    """Raise ValueError naming ``path`` and the mismatch unless the checkpoint holds every backbone
    weight of the detector ``model_cfg`` builds and each of its weights has that detector's shape
    (another arch, family or class count is an error)."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    # registers the backbones and allows MMEngine checkpoints process-wide (not `safe_globals(...)`:
    # leaving that context would remove the same types from the process's allowance)
    import prunebench.models  # noqa: F401
    from prunebench.models.pruned_backbone import PrunedBackbone

    register_all_modules(init_default_scope=False)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a checkpoint torch.load reads ({type(e).__name__}: {e})") from None
    state = {k.removeprefix("module."): v for k, v in (data.get("state_dict", data) or {}).items()}
    want = {k: v.shape for k, v in MODELS.build(ConfigDict(model_cfg)).state_dict().items()}
    missing = [k for k in want if k.startswith("backbone.") and k not in state]
    fresh = tuple(f"backbone.{p}" for p in PrunedBackbone.FRESH)  # a pruned checkpoint's extras
    extra = [k for k in state if k.startswith("backbone.") and k not in want and not k.startswith(fresh)]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(s)}"
        for k, s in want.items()
        if k in state and state[k].shape != s
    ]
    if missing or wrong or extra:
        b = model_cfg["backbone"]
        expected = f"{b['type']} {b.get('arch', '')} (embed_dim {b.get('embed_dim', 'of the arch')})"
        detail = "; ".join(
            f"{len(keys)} {what}, e.g. {', '.join(keys[:3])}"
            for keys, what in (
                (missing, "weights missing"),
                (extra, "backbone weights the grid's detector lacks"),
                (wrong, "of another shape (file vs grid)"),
            )
            if keys
        )
        raise ValueError(
            f"{path}: does not fit the grid's detector: the file holds a {_describe(state)}, the grid "
            f"builds {expected}: {detail}"
        )
