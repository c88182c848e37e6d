"""``prunebench eval``: a checkpoint of prunebench's Mask R-CNN (e.g. a converted released one) ->
a run folder like a sweep's (``run.json``, ``config.py``, ``status.json``, ``metrics.json`` with
``source: eval``), which ``prunebench report`` lists beside sweep runs.

The model is the one the checkpoint records (``prunebench convert`` writes the record), or the
one ``--cell`` / ``--arch`` name; it loads strictly. MMDetection's test loop computes COCO box and
mask AP on the validation images (on a GPU the whole detector under autocast to ``dtype`` where
it is fp16 or bf16: fp16 is the official test's precision; on a CPU in fp32), the achieved keep
ratio is recorded over them, and the detector is timed as a job times it (the first val images,
batch 1, ``dtype``), FLOPs included.
``selector_inference="gumbel"`` with a ``seed`` samples the selectors' decisions as the official
test does; ``keep_ratios`` evaluates a model at other budgets (one per stage or per layer).

- ``inputs``: the checkpoint and its model record, the evaluation's options, the data, the run id;
- ``run``: ``run_eval``, what ``prunebench eval`` calls.
"""

from __future__ import annotations

from .inputs import EvalError, parse_cell, per_layer, run_id
from .run import EVAL_LOG, EVAL_SWEEP, run_eval

__all__ = ["EVAL_LOG", "EVAL_SWEEP", "EvalError", "parse_cell", "per_layer", "run_eval", "run_id"]
