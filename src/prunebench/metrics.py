"""What a run's ``metrics.json`` holds besides latency: COCO metrics from MMDetection's test loop,
the achieved keep ratio over the evaluated images and the environment. Shared by sweep jobs and
``prunebench eval``."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def run_env() -> dict:
    """Package versions, CUDA, host and the git commit of this checkout."""
    import mmcv
    import mmdet
    import mmengine
    import timm
    import torch

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mmcv": mmcv.__version__,
        "mmdet": mmdet.__version__,
        "mmengine": mmengine.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "host": platform.node(),
        "git_commit": commit,
    }


def keep_ratio_recorder(backbone):
    """Forward hook summing each pruning layer's keep ratio over the evaluation images (a traced
    forward, as the FLOP count runs, is not an evaluated image)."""
    import torch

    sums: list[float] = []
    count = [0]

    def hook(module, args, output):
        masks = getattr(module, "last_keep_masks", None) or []
        if not masks or torch.jit.is_tracing():
            return
        if not sums:
            sums.extend([0.0] * len(masks))
        for i, m in enumerate(masks):
            sums[i] += float(m.float().mean(dim=1).sum())
        count[0] += masks[0].shape[0]

    handle = backbone.register_forward_hook(hook)

    def result() -> dict:
        handle.remove()
        per_layer = [s / count[0] for s in sums] if count[0] else []
        return {
            "mean": sum(per_layer) / len(per_layer) if per_layer else 1.0,
            "per_layer": per_layer,
            "images": count[0],
        }

    return result


def coco_metrics(raw: dict) -> dict:
    """``box_ap`` / ``mask_ap`` (0-100; ``mask_ap`` None for a box-only detector) and every raw
    value of MMDetection's CocoMetric."""
    coco = {k.split("/", 1)[-1]: float(v) for k, v in raw.items() if isinstance(v, (int, float))}
    return {
        "box_ap": round(100 * coco.get("bbox_mAP", float("nan")), 2),
        "mask_ap": round(100 * coco["segm_mAP"], 2) if "segm_mAP" in coco else None,
        "coco": coco,
    }
