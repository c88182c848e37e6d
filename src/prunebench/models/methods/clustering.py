"""Which tokens merge: ToMe's bipartite soft matching and ATC's agglomerative clustering.

Both take the similarity metric (B, T, d) of unit rows (:func:`.merging.mean_keys`) and return
``step`` (B, T) long, the new row of each current row, and the new width, for
:meth:`.merging.Clusters.merge`. Neither carries a gradient.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...axes import LINKAGES

__all__ = ["LINKAGES", "bipartite_matching", "agglomerative", "clustering_flops", "clustering_seconds"]

_SECONDS = [0.0]  # wall time spent in SciPy's clustering in this process


def clustering_seconds() -> float:
    """Seconds this process has spent in ATC's clustering (SciPy) so far: ``prunebench bench``
    reports the difference over each timed backbone call, ATC's clustering share."""
    return _SECONDS[0]


@torch.no_grad()
def bipartite_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, int]:
    """ToMe: split the sequence alternately into A (even rows) and B (odd rows), match each A
    token to its most similar B token, and merge the ``r`` best-matched A tokens into their
    matches (``r`` capped at half the tokens). New order as ToMe's: the unmerged A tokens by
    decreasing match similarity, then the B tokens in order."""
    B, T, _ = metric.shape
    r = min(r, T // 2)
    a, b = metric[:, ::2], metric[:, 1::2]
    best, match = (a @ b.transpose(1, 2)).max(dim=-1)
    edges = best.argsort(dim=-1, descending=True)
    n_a, kept = a.shape[1], a.shape[1] - r
    step_a = torch.empty_like(edges)
    step_a.scatter_(1, edges[:, r:], torch.arange(kept, device=edges.device).expand(B, -1))
    step_a.scatter_(1, edges[:, :r], kept + match.gather(1, edges[:, :r]))
    step = torch.empty(B, T, dtype=torch.long, device=metric.device)
    step[:, ::2] = step_a
    step[:, 1::2] = kept + torch.arange(T - n_a, device=edges.device)
    return step, T - r


@torch.no_grad()
def agglomerative(metric: torch.Tensor, clusters: int, linkage: str = "average") -> tuple[torch.Tensor, int]:
    """ATC: per image, agglomerative clustering of the cosine distances ``1 - cos`` with
    ``linkage`` (SciPy's C implementation), the tree cut after ``T - clusters`` merges (as
    scikit-learn's ``AgglomerativeClustering(n_clusters=clusters)``); clusters numbered by their
    root in the tree."""
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; expected one of {LINKAGES}")
    clusters = max(1, min(clusters, int(metric.shape[1])))
    dist = 1 - metric @ metric.transpose(1, 2)
    return AgglomerativeClustering.apply(dist, clusters, linkage), clusters


def clustering_flops(batch: int, tokens: int) -> int:
    """The FLOPs counted for agglomerative clustering of ``tokens`` per image (FLOP analysis
    cannot see SciPy): one per distance update of the Lance-Williams recurrence, ``T(T-1)/2``
    per image (SciPy builds the whole tree)."""
    return batch * tokens * (tokens - 1) // 2


class AgglomerativeClustering(torch.autograd.Function):
    """SciPy's clustering of distance matrices (B, T, T) into labels (B, T), one traced op
    (``prim::PythonOp.AgglomerativeClustering``, counted by :func:`clustering_flops`)."""

    @staticmethod
    def forward(ctx, dist: torch.Tensor, clusters: int, linkage: str) -> torch.Tensor:
        from scipy.cluster.hierarchy import linkage as build_tree
        from scipy.spatial.distance import squareform

        t0 = time.perf_counter()
        B, T, _ = dist.shape
        d = dist.detach().float().cpu().numpy()
        labels = np.empty((B, T), dtype=np.int64)
        for i in range(B):
            labels[i] = _cut(build_tree(squareform(d[i], checks=False), method=linkage), T, clusters)
        out = torch.from_numpy(labels).to(dist.device)
        _SECONDS[0] += time.perf_counter() - t0
        ctx.mark_non_differentiable(out)
        return out


def _cut(tree: np.ndarray, n: int, clusters: int) -> np.ndarray:
    """Cluster labels 0..clusters-1 of the ``n`` leaves after the first ``n - clusters`` merges
    of a SciPy linkage ``tree`` (pointer jumping to each leaf's root, no per-token loop)."""
    parent = np.arange(2 * n - 1)
    merges = tree[: n - clusters, :2].astype(np.int64)
    new = n + np.arange(len(merges))
    parent[merges[:, 0]], parent[merges[:, 1]] = new, new
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            break
        parent = up
    return np.unique(parent[:n], return_inverse=True)[1].reshape(-1)
