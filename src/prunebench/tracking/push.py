"""A finished run's results into a tracker, once.

Each push is recorded in the run folder's ``tracking.json`` (tracker -> destination); a run already
pushed to the same destination is skipped, and MLflow is also asked (a run tagged with the run id
that holds the final metrics is not sent again), so pushing twice never duplicates a run. A run
that was tracked while it trained gets its final metrics added to that same tracker run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..results import atomic_write_json, read_json, scan_results
from .backends import RUN_TAG, artifact_location, config_destinations, destinations, wandb_init
from .section import TRACKERS, TrackingError, final_metrics, install_line, run_params

TRACKING_FILE = "tracking.json"


def _tensorboard(dest: dict, metrics: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(dest["log_dir"])
    try:
        for key, value in final_metrics(metrics).items():
            writer.add_scalar(key, value, 0)
        writer.add_text("params", "  \n".join(f"{k}: {v}" for k, v in run_params(metrics).items()), 0)
    finally:
        writer.close()


def mlflow_experiment(client, dest: dict) -> str:
    """The id of ``dest``'s experiment, created when missing (by another job at the same time too)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(dest["experiment"])
    if exp is None:
        try:
            return client.create_experiment(dest["experiment"], artifact_location(dest["tracking_uri"]))
        except MlflowException:  # created meanwhile by a job beside this one
            exp = client.get_experiment_by_name(dest["experiment"])
    return exp.experiment_id


def _mlflow(dest: dict, metrics: dict) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(dest["tracking_uri"])
    exp_id = mlflow_experiment(client, dest)
    run_id, params, final = metrics["run_id"], run_params(metrics), final_metrics(metrics)
    found = client.search_runs([exp_id], filter_string=f"tags.{RUN_TAG} = '{run_id}'", max_results=1)
    if found and any(k in found[0].data.metrics for k in final):
        return  # pushed before
    new_params = []
    if found:
        run = found[0]
    else:
        run = client.create_run(exp_id, run_name=run_id, tags={**params, RUN_TAG: run_id})
        new_params = [Param(k, v) for k, v in params.items()]
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()], params=new_params
    )
    client.set_terminated(run.info.run_id)


def _wandb(dest: dict, metrics: dict) -> None:
    import wandb

    run = wandb.init(**wandb_init(dest, metrics, run_params(metrics)), settings=wandb.Settings(silent=True))
    try:
        final = final_metrics(metrics)
        run.log(final)
        run.summary.update(final)
    finally:
        run.finish()


_PUSH = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def push_run(run_dir: Path, metrics: dict, dest: dict[str, dict]) -> dict[str, str]:
    """Send a finished run's results (its ``metrics.json``) to each tracker of ``dest``
    (:func:`~prunebench.tracking.backends.destinations`); returns tracker -> ``sent`` or
    ``already`` (pushed to that destination before)."""
    done = read_json(Path(run_dir) / TRACKING_FILE) or {}
    out = {}
    for tracker, where in dest.items():
        if done.get(tracker) == where:
            out[tracker] = "already"
            continue
        _PUSH[tracker](where, metrics)
        done[tracker] = where
        atomic_write_json(Path(run_dir) / TRACKING_FILE, done)
        out[tracker] = "sent"
    return out


def prepare_trackers(cfg) -> None:
    """Before a job trains: its MLflow experiment exists, so that MMEngine's backends of jobs
    starting together do not race to create it."""
    dest = config_destinations(cfg).get("mlflow")
    if dest:
        from mlflow.tracking import MlflowClient

        mlflow_experiment(MlflowClient(dest["tracking_uri"]), dest)


def track_final(run_dir: Path, cfg, metrics: dict) -> None:
    """At the end of a job: the final results into the trackers its config logs to. A tracker that
    fails is logged, not fatal (``prunebench report --to`` can push later)."""
    from mmengine.logging import print_log

    for tracker, where in config_destinations(cfg).items():
        try:
            push_run(run_dir, metrics, {tracker: where})
        except Exception as e:  # a tracker server down must not fail a finished run
            print_log(
                f"tracking: final results not sent to {tracker} ({type(e).__name__}: {e}); send them "
                f"later with `prunebench report {Path(run_dir).parent} --to {tracker}`",
                logger="current",
                level=logging.WARNING,
            )


def push_results(root: Path, tracker: str, settings: dict | None = None) -> dict[str, int]:
    """``prunebench report ROOT --to TRACKER``: every finished run under ``root`` into
    ``tracker`` (``settings`` as in a grid's ``tracking:``); returns counts of ``sent`` and
    ``already``. Raises TrackingError for an unknown or missing tracker."""
    if tracker not in TRACKERS:
        raise TrackingError(f"--to {tracker!r}: choose one of {', '.join(TRACKERS)}")
    missing = install_line(tracker)
    if missing:
        raise TrackingError(
            f"--to {tracker}: the {TRACKERS[tracker][0]} package is not installed. Fix: {missing}"
        )
    counts = {"sent": 0, "already": 0}
    for run in scan_results(Path(root)):
        if run.state != "done" or not run.metrics:
            continue
        dest = destinations({tracker: settings or {}}, run.sweep, run.run_id, run.path)
        result = push_run(run.path, {"sweep": run.sweep, **run.metrics}, dest)
        counts[result[tracker]] += 1
    return counts
