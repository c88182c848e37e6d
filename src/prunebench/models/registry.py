"""``SELECTORS``: the registry of token selectors, where a user's own selector becomes a grid value.

An MMEngine ``Registry`` (scope ``prunebench``), a child of MMDetection's ``MODELS`` where
MMDetection is installed. The built-in ``mlp`` and ``gating`` are registered in it; a plug-in is a
``torch.nn.Module`` in the user's own module::

    from prunebench.models import SELECTORS

    @SELECTORS.register_module("my_selector")
    class MySelector(torch.nn.Module):
        def __init__(self, dim: int): ...
        def forward(self, x, available=None):  # x (B, N, D); available: bool (B, N) or None
            return logits                       # (B, N, 2): index 0 keep, index 1 prune

The grid names that module (``imports``), which every generated ``config.py`` lists in its
``custom_imports``, so MMDetection's ``tools/train.py``, local and Slurm jobs register it before
the model is built.
"""

from __future__ import annotations

from importlib.util import find_spec

from mmengine.registry import Registry

__all__ = ["SELECTORS"]


def _parent():
    if find_spec("mmdet") is None:  # a bare GPU machine running scripts/gpu_bench.py
        return None
    from mmdet.registry import MODELS

    return MODELS


SELECTORS = Registry("token selector", parent=_parent(), scope="prunebench")
