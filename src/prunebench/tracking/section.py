"""The grid's ``tracking:`` section and what every tracker is told about a run.

    tracking:
      tensorboard: true
      mlflow: {tracking_uri: http://127.0.0.1:5000, experiment: my-study}
      wandb: {project: my-study, mode: offline}

Each tracker is optional, several at once. Defaults: MLflow's ``tracking_uri`` is a local SQLite
store beside the sweeps (``<results>/mlflow.db``, artifacts in ``<results>/mlartifacts``), its
``experiment`` the sweep's name; W&B's ``project`` the sweep's name and ``mode`` ``offline``
(files in the run folder, sent only by ``wandb sync``); the sweep's name is W&B's group.
"""

from __future__ import annotations

import importlib.util
from typing import Any

#: tracker -> (module it needs, keys of its mapping)
TRACKERS = {
    "tensorboard": ("tensorboard", ()),
    "mlflow": ("mlflow", ("tracking_uri", "experiment")),
    "wandb": ("wandb", ("project", "entity", "mode")),
}
WANDB_MODES = ("offline", "online")


class TrackingError(ValueError):
    """A tracker that cannot be used (not installed, bad settings); the message says the fix."""


def install_line(tracker: str) -> str | None:
    """``pip install 'prunebench[tracker]'`` when the tracker's package is missing, else None."""
    module = TRACKERS[tracker][0]
    return None if importlib.util.find_spec(module) else f"pip install 'prunebench[{tracker}]'"


def check_tracking(c, raw: Any) -> dict[str, dict]:
    """The checked ``tracking:`` section: tracker -> its settings (``{}`` for TensorBoard); raises
    through the grid checker ``c`` for unknown keys, bad values or a tracker not installed."""
    if raw is None:
        return {}
    raw = c.known("tracking", raw, tuple(TRACKERS))
    out = {}
    for tracker, value in raw.items():
        key = f"tracking.{tracker}"
        if value is False or value is None:
            continue
        if value is True:
            value = {}
        settings = c.known(key, value, TRACKERS[tracker][1])
        for k, v in settings.items():
            c.typed(f"{key}.{k}", v, str, "a string")
        if settings.get("mode", "offline") not in WANDB_MODES:
            raise c.fail(f"{key}.mode", f"unknown mode {settings['mode']!r}", "use offline or online")
        missing = install_line(tracker)
        if missing:
            raise c.fail(key, f"the {TRACKERS[tracker][0]} package is not installed", missing)
        out[tracker] = settings
    return out


def push_settings(tracker: str | None, tracking_uri: str | None, name: str | None, online: bool) -> dict:
    """``report --to`` options as a grid's ``tracking:`` settings of ``tracker``: MLflow's
    ``tracking_uri`` and ``experiment`` (``name``), W&B's ``project`` (``name``) and ``mode``."""
    if tracker == "mlflow":
        return {k: v for k, v in (("tracking_uri", tracking_uri), ("experiment", name)) if v}
    if tracker == "wandb":
        return {"mode": "online" if online else "offline", **({"project": name} if name else {})}
    return {}


def method_of(metrics: dict) -> str:
    axes = metrics.get("axes") or {}
    return str(axes.get("method") or ("dense" if metrics.get("stage") == "dense" else "selector"))


def run_params(metrics: dict) -> dict[str, str]:
    """A run's identity for a tracker: sweep, run id, stage, arch, family, seed, method and each
    axis (``axis.<name>``), as strings."""
    params = {
        "sweep": metrics.get("sweep"),
        "run_id": metrics.get("run_id"),
        "stage": metrics.get("stage"),
        "arch": metrics.get("backbone"),
        "family": metrics.get("family") or (metrics.get("axes") or {}).get("family") or "plain",
        "seed": metrics.get("seed"),
        "method": method_of(metrics),
    }
    params.update({f"axis.{k}": v for k, v in (metrics.get("axes") or {}).items()})
    return {k: str(v) for k, v in params.items()}


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    return float(value) if ok else None


def final_metrics(metrics: dict) -> dict[str, float]:
    """A finished run's results under ``final/``: COCO box and mask AP, latency (ms), paired
    speed-ups, keep ratio and GFLOPs per image (mean, p10, p90, images); absent values left out."""
    lat = metrics.get("latency_ms") or {}
    flops = metrics.get("flops_g") or {}
    speedup = (metrics.get("paired") or {}).get("speedup") or {}
    keep = metrics.get("keep_ratio")
    values = {
        "box_ap": metrics.get("box_ap"),
        "mask_ap": metrics.get("mask_ap"),
        "latency_backbone_ms": lat.get("backbone"),
        "latency_full_ms": lat.get("full"),
        "speedup_backbone": speedup.get("backbone"),
        "speedup_full": speedup.get("full"),
        "keep_ratio": keep.get("mean") if isinstance(keep, dict) else keep,
        "gflops_images": flops.get("images"),
    }
    for part in ("backbone", "full"):
        values[f"gflops_{part}"] = flops.get(part)
        for q in ("p10", "p90"):
            values[f"gflops_{part}_{q}"] = (flops.get(q) or {}).get(part)
    return {f"final/{k}": n for k, v in values.items() if (n := _number(v)) is not None}
