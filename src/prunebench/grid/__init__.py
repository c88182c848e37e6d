"""YAML -> validated Grid: schema, types and values, with errors naming file, line, key and fix.

Validation reads only the grid file (and checks that a pretrained checkpoint exists); dataset
checks happen when a sweep is prepared (:mod:`prunebench.sweep`), expansion into runs in
:mod:`prunebench.spec`.

- ``schema``: the allowed sections and keys, their defaults, ``Grid``, ``GridError``, the checker;
- ``sections``: one validator per section;
- ``load``: ``load_grid``, the top level of the file.
"""

from __future__ import annotations

from .load import load_grid
from .schema import (
    BACKBONE_KEYS,
    BENCH_KEYS,
    COCO_DEFAULTS,
    DATA_KEYS,
    PER_VALUE_SECTIONS,
    SCHEDULE_KEYS,
    SECTIONS,
    SLURM_KEYS,
    STAGE_DEFAULTS,
    STAGE_KEYS,
    Grid,
    GridError,
)

__all__ = [
    "BACKBONE_KEYS",
    "BENCH_KEYS",
    "COCO_DEFAULTS",
    "DATA_KEYS",
    "PER_VALUE_SECTIONS",
    "SCHEDULE_KEYS",
    "SECTIONS",
    "SLURM_KEYS",
    "STAGE_DEFAULTS",
    "STAGE_KEYS",
    "Grid",
    "GridError",
    "load_grid",
]
