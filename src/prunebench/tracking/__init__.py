"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, through MMEngine's visualisation
backends while a run trains, and prunebench's own push of a finished run's results.

- ``section``: the grid's ``tracking:`` section (checked, with the install line of a missing
  tracker) and what every tracker is told about a run (names, parameters, final metrics);
- ``backends``: the ``vis_backends`` a run's ``config.py`` gets, so ``tools/train.py`` logs the same;
- ``push``: a finished run's final metrics into a tracker (at the end of a tracked job, or by
  ``prunebench report RESULTS --to``), once: a second push finds the first and sends nothing.

Nothing is sent anywhere unless a grid's ``tracking:`` or ``report --to`` asks for it.
"""

from __future__ import annotations

from .backends import add_vis_backends
from .push import push_results, push_run
from .section import TRACKERS, TrackingError, check_tracking, final_metrics, run_params

__all__ = [
    "TRACKERS",
    "TrackingError",
    "add_vis_backends",
    "check_tracking",
    "final_metrics",
    "push_results",
    "push_run",
    "run_params",
]
