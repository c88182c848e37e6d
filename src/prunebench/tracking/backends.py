"""Where each tracker writes a run (its destination) and the MMEngine ``vis_backends`` that log the
run's training there (losses and learning rate as curves, its identity as parameters and tags).
A run's ``config.py`` holds them, so MMDetection's ``tools/train.py`` logs the same; the job
reads the destinations back from it to add the final results."""

from __future__ import annotations

import re
from pathlib import Path

from .section import method_of, run_params

RUN_TAG = "prunebench_run_id"  # MLflow tag that finds a run again
TB_DIR = "tensorboard"  # in the run folder
WANDB_DIR = "wandb"  # in the run folder: W&B's own wandb/ subfolder goes below it
MLFLOW_STORE = "mlflow.db"  # default MLflow store (SQLite), in the results folder beside the sweeps
MLFLOW_ARTIFACTS = "mlartifacts"  # its artifacts (the run's logs and config), beside it
_CONFIG_KEYS = ["train_cfg", "optim_wrapper", "randomness"]  # config sections MLflow records
TRACKER_BACKENDS = ("TensorboardVisBackend", "MLflowVisBackend", "WandbVisBackend")


def wandb_id(sweep: str, run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{sweep}-{run_id}")


def destinations(tracking: dict[str, dict], sweep: str, run_id: str, run_dir: Path) -> dict[str, dict]:
    """Tracker -> where the run goes: TensorBoard's ``log_dir``; MLflow's ``tracking_uri`` (default
    a SQLite store in the results folder) and ``experiment``; W&B's ``project``, ``entity``,
    ``mode``, ``group``, ``id`` and ``dir``."""
    run_dir = Path(run_dir).resolve()
    out: dict[str, dict] = {}
    if "tensorboard" in tracking:
        out["tensorboard"] = {"log_dir": str(run_dir / TB_DIR)}
    if "mlflow" in tracking:
        mlf = tracking["mlflow"]
        out["mlflow"] = {
            "tracking_uri": mlf.get("tracking_uri") or f"sqlite:///{run_dir.parent.parent / MLFLOW_STORE}",
            "experiment": mlf.get("experiment") or sweep,
        }
    if "wandb" in tracking:
        wb = tracking["wandb"]
        out["wandb"] = {
            "project": wb.get("project") or sweep,
            "entity": wb.get("entity"),
            "mode": wb.get("mode", "offline"),
            "group": sweep,
            "id": wandb_id(sweep, run_id),
            "dir": str(run_dir / WANDB_DIR),
        }
    return out


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps artifacts (beside the database; MLflow
    would use the working directory); None for a server, which has its own."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).parent / MLFLOW_ARTIFACTS).as_uri()


def spec_identity(spec) -> dict:
    """The ``metrics.json`` identity fields of a RunSpec (what :func:`run_params` reads)."""
    return {
        "sweep": spec.sweep,
        "run_id": spec.run_id,
        "stage": spec.stage,
        "backbone": spec.backbone,
        "family": spec.backbone_args.get("family", "plain"),
        "seed": spec.seed,
        "axes": spec.axes,
    }


def vis_backends(dest: dict[str, dict], identity: dict) -> list[dict]:
    """MMEngine vis backend configs logging a run to ``dest`` (:func:`destinations`)."""
    params = run_params(identity)
    backends = []
    if "tensorboard" in dest:
        backends.append(dict(type="TensorboardVisBackend", save_dir=dest["tensorboard"]["log_dir"]))
    if "mlflow" in dest:
        m = dest["mlflow"]
        backends.append(
            dict(
                type="MLflowVisBackend",  # save_dir: the runner's vis_data folder (unused with a URI)
                exp_name=m["experiment"],
                run_name=identity["run_id"],
                tags={**params, RUN_TAG: identity["run_id"]},
                params=params,
                tracking_uri=m["tracking_uri"],
                tracked_config_keys=_CONFIG_KEYS,
                artifact_location=artifact_location(m["tracking_uri"]),
            )
        )
    if "wandb" in dest:
        w = dest["wandb"]
        backends.append(
            dict(
                type="WandbVisBackend",
                save_dir=w["dir"],
                init_kwargs=wandb_init(w, identity, params),
            )
        )
    return backends


def wandb_init(w: dict, identity: dict, params: dict) -> dict:
    """``wandb.init`` arguments of a run (the same when training and when pushing its results)."""
    kwargs = dict(
        project=w["project"],
        group=w["group"],
        name=identity["run_id"],
        id=w["id"],
        mode=w["mode"],
        dir=w["dir"],
        config=params,
        tags=[identity.get("stage") or "?", identity.get("backbone") or "?", method_of(identity)],
        resume="allow",
    )
    return {**kwargs, **({"entity": w["entity"]} if w.get("entity") else {})}


def add_vis_backends(cfg: dict, tracking: dict[str, dict], spec, run_dir: Path) -> None:
    """Append the grid's trackers to ``cfg``'s visualizer (nothing without ``tracking``)."""
    if not tracking:
        return
    dest = destinations(tracking, spec.sweep, spec.run_id, run_dir)
    visualizer = cfg.setdefault("visualizer", dict(type="DetLocalVisualizer", name="visualizer"))
    visualizer["vis_backends"] = list(visualizer.get("vis_backends") or []) + vis_backends(
        dest, spec_identity(spec)
    )


def detach_trackers(visualizer) -> None:
    """After training: drop the trackers' backends from the runner's visualizer. MMEngine closed
    them at the end of training and closes them again after the test loop, where MLflow's would
    start a new, unnamed run (its close logs artifacts) and W&B's would log to a finished run."""
    backends = visualizer._vis_backends  # MMEngine keeps them by name; there is no public remove
    for name, backend in list(backends.items()):
        if type(backend).__name__ in TRACKER_BACKENDS:
            del backends[name]


def config_destinations(cfg) -> dict[str, dict]:
    """The trackers a run's config logs to (read back from its vis backends)."""
    out: dict[str, dict] = {}
    for b in (cfg.get("visualizer") or {}).get("vis_backends") or []:
        kind = b.get("type")
        if kind == "TensorboardVisBackend":
            out["tensorboard"] = {"log_dir": b["save_dir"]}
        elif kind == "MLflowVisBackend" and b.get("tracking_uri"):
            out["mlflow"] = {"tracking_uri": b["tracking_uri"], "experiment": b.get("exp_name") or "Default"}
        elif kind == "WandbVisBackend":
            kw = b.get("init_kwargs") or {}
            out["wandb"] = {k: kw.get(k) for k in ("project", "entity", "mode", "group", "id", "dir")}
    return out
