"""FLOPs of a detector with a (pruned) ViT backbone, per image, over a whole image set.

Each trace counts as :mod:`prunebench.bench.trace` does (MMEngine's complexity analysis). A pruned
model's cost varies per image, so :class:`FlopsRecorder` hooks a detector while it runs
(MMDetection's COCO test, or the timed images) and decomposes each image's FLOPs exactly:

* the ViT blocks, from the token counts each block's halves processed: the rows entering its
  ``norm1`` (attention) and ``norm2`` (MLP), recorded per image by hooks. Any token mechanism
  (selectors, EViT, ATS, merging) that runs timm blocks is counted this way, including blocks
  whose MLP runs on fewer tokens than their attention. A half's cost is a quadratic in its token
  count, fitted from traces of block 0's halves (:class:`BlockCost`);
* everything else (patch embedding, selectors, which score all N tokens, the pyramid or adapter,
  neck and heads), traced once per padded image size on the first image of that size: the
  trace's total minus its blocks' cost at the trace's own counts.

With a test batch > 1 each image gets the cost of the block calls that ran it (one call per
image in the per-image loop, the batch's common or padded width otherwise).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from .trace import TensorForward, traced_gflops

__all__ = ["BlockCost", "FlopsRecorder", "flops_summary"]


class _Half(nn.Module):
    """The attention (``part=0``) or MLP (``part=1``) half of a timm ``Block``."""

    def __init__(self, blk: nn.Module, part: int):
        super().__init__()
        self.blk, self.part = blk, part

    def forward(self, x):
        b = self.blk
        if self.part == 0:
            return x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


class BlockCost:
    """GFLOPs of a ViT block's attention and MLP halves at ``n`` tokens of one image: quadratics
    in ``n`` (linear layers and norms grow with ``n``, attention with ``n**2``), fitted exactly
    from traces of ``blk``'s halves at three token counts (NaN where a trace failed)."""

    SAMPLES = (4, 8, 12)

    def __init__(self, blk: nn.Module):
        dim = blk.norm1.normalized_shape[0]
        p = next(blk.parameters())
        self.coef = []
        for part in (0, 1):
            half = _Half(blk, part)
            ys = [
                traced_gflops(half, torch.zeros(1, n, dim, device=p.device, dtype=p.dtype))
                for n in self.SAMPLES
            ]
            self.coef.append((math.nan,) * 3 if None in ys else _quadratic(self.SAMPLES, ys))

    def __call__(self, part: int, n: float) -> float:
        a, b, c = self.coef[part]
        return a + b * n + c * n * n


def _quadratic(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Coefficients (a, b, c) of ``a + b*x + c*x**2`` through three points."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    c = (d12 - d01) / (x2 - x0)
    b = d01 - c * (x0 + x1)
    return y0 - b * x0 - c * x0 * x0, b, c


def _split(calls: list[tuple[int, int]], batch: int, cost) -> list[tuple[float, float]]:
    """(tokens, GFLOPs) of each image of a batch of ``batch`` in a block half's calls ``(images,
    tokens)``: calls that cover the images in order (one for the batch, or one per image) give each
    image its own; any other calls are shared evenly."""
    if sum(b for b, _ in calls) == batch:
        return [(float(n), cost(n)) for b, n in calls for _ in range(b)]
    return [(sum(b * n for b, n in calls) / batch, sum(b * cost(n) for b, n in calls) / batch)] * batch


class FlopsRecorder:
    """Hooks on ``model`` (an MMDetection detector whose backbone has timm ``blocks``) that record,
    per image of each forward, the tokens each block's halves processed, and per padded image size
    the token-independent FLOPs (module docstring). ``full=False``: backbone only.

    Use as a context manager (hooks removed on exit), then :meth:`summary` and :attr:`images`.
    """

    def __init__(self, model: nn.Module, full: bool = True):
        self.model, self.backbone = model, model.backbone
        blocks = getattr(self.backbone, "blocks", None) or []  # none: the whole backbone is traced
        self.cost = BlockCost(blocks[0]) if blocks else None
        self.images: list[dict] = []  # per image: size, tokens [[attn, mlp] per block], gflops
        self.fixed: dict[tuple[int, int], dict] = {}  # padded size -> token-independent GFLOPs
        self._calls: list[tuple[list, list]] = []
        self._tracing = False
        self._samples = None
        bb = self.backbone
        self._handles = [
            bb.register_forward_pre_hook(self._start),
            bb.register_forward_hook(self._finish),
        ]
        for blk in blocks:
            self._calls.append(([], []))
            for part, norm in enumerate((blk.norm1, blk.norm2)):
                self._handles.append(
                    norm.register_forward_pre_hook(self._counter(len(self._calls) - 1, part))
                )
        if full:
            self._handles.append(model.register_forward_pre_hook(self._detector_call, with_kwargs=True))

    def __enter__(self) -> FlopsRecorder:
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ hooks

    def _counter(self, block: int, part: int):
        def hook(module, args):
            x = args[0]
            self._calls[block][part].append((int(x.shape[:-2].numel()), int(x.shape[-2])))

        return hook

    def _reset(self) -> None:
        for calls in self._calls:
            calls[0].clear()
            calls[1].clear()

    def _detector_call(self, module, args, kwargs):
        """Before a detector forward: remember its data samples (the full trace needs them)."""
        if not self._tracing:
            self._samples = kwargs.get("data_samples", args[1] if len(args) > 1 else None)

    def _start(self, module, args):
        if self._tracing:
            return
        img = args[0]
        size = _padded(img)
        if size not in self.fixed:
            self.fixed[size] = self._trace(img[:1])
        self._reset()

    def _finish(self, module, args, output):
        if self._tracing:
            return
        img = args[0]
        B, size = img.shape[0], _padded(img)
        per_image = [{"size": list(size), "tokens": [], "blocks": 0.0} for _ in range(B)]
        for calls in self._calls:
            halves = [_split(c, B, partial(self.cost, part)) for part, c in enumerate(calls)]
            for rec, (attn, mlp) in zip(per_image, zip(*halves)):
                rec["tokens"].append([attn[0], mlp[0]])
                rec["blocks"] += attn[1] + mlp[1]
        fixed = self.fixed[size]
        for rec in per_image:
            if not math.isfinite(rec["blocks"]):  # a block's trace failed (logged): no count
                rec["blocks"] = None
            for part in ("backbone", "full"):
                known = None not in (fixed.get(part), rec["blocks"])
                rec[part] = fixed[part] + rec["blocks"] if known else None
        self.images.extend(per_image)

    # ------------------------------------------------------------------ traces

    def _blocks_at_trace(self) -> float:
        return sum(
            self.cost(part, w) * b for calls in self._calls for part, c in enumerate(calls) for b, w in c
        )

    def _trace(self, img: torch.Tensor) -> dict:
        """Token-independent GFLOPs of the backbone (and detector) at ``img``'s padded size. The
        random state is restored after (sampled decisions of the evaluation stay as without it)."""
        self._tracing = True
        devices = [img.device] if img.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._traced(img)

    def _traced(self, img: torch.Tensor) -> dict:
        try:
            out = {}
            self._reset()
            total = traced_gflops(self.backbone, img)
            out["backbone"] = None if total is None else total - self._blocks_at_trace()
            if self._samples is not None:
                self._reset()
                total = traced_gflops(TensorForward(self.model, self._samples[:1]), img)
                out["full"] = None if total is None else total - self._blocks_at_trace()
        finally:
            self._tracing = False
        return out

    def summary(self, source: str) -> dict:
        """``flops_g`` of ``metrics.json`` (see :func:`flops_summary`), over the images of every
        process under ``torch.distributed`` (a collective call there)."""
        from mmengine.dist import all_gather_object, get_world_size

        images, sizes = self.images, set(self.fixed)
        if get_world_size() > 1:
            parts = all_gather_object((images, sorted(sizes)))
            images = [r for part in parts for r in part[0]]
            sizes = {tuple(s) for part in parts for s in part[1]}
        return flops_summary(images, source, len(sizes))


def _padded(img: torch.Tensor) -> tuple[int, int]:
    H, W = img.shape[-2:]
    return int(-(-H // 32) * 32), int(-(-W // 32) * 32)


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=10, method="inclusive")
    return q[0], q[-1]


def flops_summary(images: list[dict], source: str, sizes: int) -> dict:
    """GFLOPs per image over ``images`` (records of :class:`FlopsRecorder`): ``backbone``,
    ``full`` and ``vit_blocks`` means (None where not counted), their ``p10`` / ``p90``, the image
    count ``images``, the number of padded ``sizes`` traced and ``source`` (which images)."""
    out: dict = {"p10": {}, "p90": {}}
    for key, field in (("backbone", "backbone"), ("full", "full"), ("vit_blocks", "blocks")):
        values = [r[field] for r in images if r.get(field) is not None]
        if not values or len(values) < len(images):
            out[key] = out["p10"][key] = out["p90"][key] = None
            continue
        out[key] = statistics.fmean(values)
        out["p10"][key], out["p90"][key] = _quantiles(values)
    return {**out, "images": len(images), "sizes": sizes, "source": source}
