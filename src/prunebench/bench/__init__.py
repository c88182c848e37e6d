"""Latency, FLOPs and achieved keep ratio of MMDetection detectors with a PrunedViT backbone.

Protocol (as MMDetection's ``benchmark.py``; statistics as SparseViT): batch-1 calls on real
images through the run's test pipeline and data preprocessor (or, for quick checks, a random
image of a given size); ``warmup`` untimed calls per model and part, then ``repeats`` timed
rounds over all images. Rounds interleave the models (per image: each model's backbone, then its
full detector), so a change in machine load hits all of them alike.

- ``timing``: each call timed alone, warm-up and interleaved rounds, robust statistics, autocast;
- ``inputs``: the detector of a config and the batches to time (random, dataset, image files);
- ``trace``: FLOPs of one traced forward; ``flops``: FLOPs per image over an image set
  (``FlopsRecorder``: hooks while a detector runs);
- ``probe``: one detector's latency, FLOPs and keep ratio; ``measure_models`` side by side;
- ``paired``: ``measure_run`` (a trained run, beside its dense parent) for the job, and
  ``run_bench``, what ``prunebench bench`` calls.
"""

from __future__ import annotations

from .flops import FlopsRecorder
from .inputs import IMAGE_SUFFIXES, build_detector, dataset_batches, file_batches, synthetic_data
from .paired import measure_run, run_bench
from .probe import measure_models
from .timing import DTYPES, autocast, latency_stats, time_calls
from .trace import traced_gflops

__all__ = [
    "DTYPES",
    "FlopsRecorder",
    "IMAGE_SUFFIXES",
    "autocast",
    "build_detector",
    "dataset_batches",
    "file_batches",
    "latency_stats",
    "measure_models",
    "measure_run",
    "run_bench",
    "synthetic_data",
    "time_calls",
    "traced_gflops",
]
