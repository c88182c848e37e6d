"""Built-in MMDetection config templates and the lookup of a grid's ``base``."""

from __future__ import annotations

from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent
TEMPLATES = {
    "mask-rcnn-vit": "mask_rcnn_vit.py",
    "mask-rcnn-vit-cpu": "mask_rcnn_vit_cpu.py",
    "cascade-mask-rcnn-vit": "cascade_mask_rcnn_vit.py",
    "cascade-mask-rcnn-vit-cpu": "cascade_mask_rcnn_vit_cpu.py",
    "dino-vit": "dino_vit.py",
    "dino-vit-cpu": "dino_vit_cpu.py",
}


def load_config(path: str | Path | None = None):
    """An MMEngine config (default: the ``mask-rcnn-vit`` template) with its default scope set."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(str(path or TEMPLATE_DIR / TEMPLATES["mask-rcnn-vit"]))
    init_default_scope(cfg.get("default_scope", "mmdet"))
    return cfg


def base_path(grid_file: Path, base: str) -> Path | None:
    """File of a grid's ``base``: a built-in template, or a config path relative to the grid file
    or the working directory; None when there is no such file. ``mmdet::`` paths (MMDetection's
    own configs) resolve inside the installed mmdet package."""
    if base in TEMPLATES:
        return TEMPLATE_DIR / TEMPLATES[base]
    if base.startswith("mmdet::"):
        from importlib.util import find_spec

        spec = find_spec("mmdet")
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / ".mim" / "configs" / base.removeprefix("mmdet::")
        return path if path.is_file() else None
    return next((p for p in (grid_file.parent / base, Path(base)) if p.is_file()), None)
