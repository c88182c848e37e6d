"""Executors: one small class per backend; ``get_executor`` picks one by name."""

from __future__ import annotations

from importlib import import_module

from .base import Executor

_BACKENDS = {
    "local": "prunebench.executors.local:LocalExecutor",
    "slurm": "prunebench.executors.slurm.executor:SlurmExecutor",
}


def get_executor(name: str, **options) -> Executor:
    """Build the executor called ``name`` ("local" or "slurm") with backend ``options``."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown executor {name!r}; choose one of {sorted(_BACKENDS)}")
    module, cls = _BACKENDS[name].split(":")
    return getattr(import_module(module), cls)(**options)


__all__ = ["Executor", "get_executor"]
