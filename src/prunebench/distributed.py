"""What the models need from ``torch.distributed`` so that a run's result does not depend on how
many processes share its batch: statistics over the global batch. Without an initialised
process group (one process) every function is the identity."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["world_size", "all_gather_rows", "all_ranks_sum"]


def world_size() -> int:
    """Processes of the initialised default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The rows (dim 0) of ``t`` from every rank, concatenated in rank order; ranks may hold
    different numbers of rows. No gradient."""
    if world_size() == 1:
        return t
    counts = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([t.shape[0]], device=t.device))
    width = int(max(c.item() for c in counts))
    padded = t.new_zeros((width, *t.shape[1:]))
    padded[: t.shape[0]] = t.detach()
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


def all_ranks_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of the scalar ``t`` over all ranks. Its gradient is the local part's times the world
    size, so that DistributedDataParallel's gradient average gives the gradient one process
    would get from the whole global batch."""
    n = world_size()
    if n == 1:
        return t
    total = t.detach().clone()
    dist.all_reduce(total)
    return total + n * (t - t.detach())
