"""``pruned_tokens: merge``, the third fate of a learned selector's pruned tokens (prunebench's own).

The token map stays N rows wide; a :class:`.merging.Clusters` of width N maps each position to
its host, a kept position (``assign``), and gives each host its size (0 for the other rows).
When a selector decides (the first block of a stage), every token it prunes joins the kept token
most similar to it (cosine of the block's keys averaged over heads): the host's value becomes the
size-weighted mean of its members. The stage's blocks run on the hosts with proportional
attention (``log(size)`` key bias, so the other rows are no keys); every full map is unmerged
(each position takes its host's value).

Training: the map keeps all N rows; the straight-through decision ``d`` enters the merge as each
member's weight factor, ``d`` for a kept token and ``1 - d`` for a pruned one (both 1 in value),
so the detection loss reaches the selector through the merged values. Inference gathers the hosts
(padded to the batch's largest count) and runs the block on them only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from .merging import Clusters, block_sized, mean_keys
from .tokens import compact, gather, scatter

__all__ = ["merge_pruned", "merged_block"]


def merge_pruned(
    blk: Block, full: torch.Tensor, clusters: Clusters | None, hard: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, Clusters]:
    """Merge each token of the full map ``full`` (B, N, D) that the new decision prunes (``hard``
    bool (B, N)) into its most similar kept token; ``keep``: the decision (straight-through float
    in training, bool at inference). Returns the rows (hosts hold their merged values) and the
    new clusters."""
    attn = blk.attn
    B, N, D = full.shape
    with torch.no_grad():
        bias = None if attn.qkv.bias is None else attn.qkv.bias[D : 2 * D]
        k = F.linear(blk.norm1(full), attn.qkv.weight[D : 2 * D], bias)
        metric = mean_keys(attn.k_norm(k.view(B, N, attn.num_heads, -1).transpose(1, 2)))
        sim = (metric @ metric.transpose(1, 2)).masked_fill(~hard[:, None, :], float("-inf"))
        pos = torch.arange(N, device=full.device).expand(B, -1)
        step = torch.where(hard, pos, sim.argmax(dim=-1))
    weight = torch.where(hard, keep, 1 - keep) if keep.is_floating_point() else None
    return (clusters or Clusters.identity(full)).merge(full, step, N, weight)


def merged_block(blk: Block, x: torch.Tensor, clusters: Clusters, sparse: bool) -> torch.Tensor:
    """``blk`` on the hosts of ``x`` (B, N, D) with proportional attention: on every row with the
    other rows masked as keys (``sparse`` False), or on the gathered hosts only."""
    if not sparse:
        return block_sized(blk, x, clusters.bias(x.dtype))
    order, valid = compact(clusters.size > 0)
    size = clusters.size.gather(1, order)
    if valid is not None:
        size = size.masked_fill(~valid, 0.0)
    rows = block_sized(blk, gather(x, order), Clusters(clusters.assign, size).bias(x.dtype))
    return scatter(x, order, rows, valid)
