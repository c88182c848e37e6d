"""MMEngine checkpoints under PyTorch >= 2.6, where ``torch.load`` defaults to ``weights_only=True``."""

from __future__ import annotations


def mmengine_checkpoint_globals() -> list:
    """What MMEngine checkpoints pickle besides tensors: the message hub's HistoryBuffers (whose
    statistics methods are stored as ``getattr`` calls) and numpy arrays/scalars."""
    import numpy as np
    from mmengine.logging import HistoryBuffer

    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [
        getattr,
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        *dtypes,
    ]


def allow_mmengine_checkpoints() -> None:
    """Let every ``torch.load`` of this process (MMEngine's resume and ``load_from`` included) read
    MMEngine checkpoints with ``weights_only=True``."""
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
