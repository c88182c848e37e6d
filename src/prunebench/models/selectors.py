"""Token selectors and keep decisions.

A selector maps tokens ``(B, N, D)`` to keep/prune logits ``(B, N, 2)`` (index 0 = keep).
:func:`keep_decision` turns logits into a decision:

* training (both rates, as in the official code and DynamicViT): per-token hard Gumbel-softmax
  with straight-through gradients. The returned float32 tensor is 0/1 in value and carries the
  soft keep probability's gradient; the keep-ratio loss steers how many tokens are kept.
* inference: ``rate="fixed"`` keeps exactly ``round(r*N)`` tokens per image (top-k of the keep
  score), so the cost is fixed; ``rate="dynamic"`` keeps the tokens whose keep logit wins, so each
  image keeps as many as it needs. A bool tensor. With ``sample=True`` (the official detection
  code's test-time behaviour) the score carries Gumbel noise at inference too.

The noise and the straight-through sum are computed in float32 whatever the autocast dtype (in
fp16 the clamp bound ``1 - 1e-6`` rounds to 1 and the noise would be infinite). Only
``available`` tokens can be kept, and every image keeps at least one token.

Selectors are looked up by name in :data:`SELECTORS` (``mlp``, ``gating`` and any plug-in a user
module registers, see :mod:`prunebench.models.registry`).

How a fresh selector starts (``selector_init``): ``official`` (its authors' init of its layers:
PyTorch's default for ``mlp``, as the official SViT code leaves them, DynamicViT's for ``gating``;
about 50 % kept per selector), ``target`` (plus a
``logit(share)`` bias towards its target share) or ``calibrated`` (plus a data-dependent
calibration on its first training batch, :meth:`Selector.calibrate`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..axes import SELECTOR_INITS
from ..distributed import all_gather_rows
from .registry import SELECTORS

__all__ = [
    "Selector",
    "MlpSelector",
    "GatingSelector",
    "keep_decision",
    "logistic_noise",
    "num_kept",
    "ROUNDINGS",
    "build_selector",
    "selector_names",
    "PluginSelector",
    "SELECTORS",
]

#: spread (std of the keep-minus-prune logit over tokens) a ``calibrated`` selector starts with:
#: wider than the logistic noise of the Gumbel decision (std 1.8), so that training decisions
#: follow the selector more than the noise (their share still sits nearer 50 % than the
#: noise-free share: README, Fidelity, "fresh selectors").
CALIBRATED_SPREAD = 3.0


class Selector(nn.Module):
    """Base of the selectors: ``forward(x, available) -> (B, N, 2)`` logits, whose last Linear
    layer is ``output``.

    The ``calibrated`` buffer travels with checkpoints: a selector that was calibrated (or comes
    from a trained checkpoint) is never calibrated again.
    """

    output: nn.Linear

    def __init__(self):
        super().__init__()
        self.register_buffer("calibrated", torch.tensor(False))
        self.share = 0.5
        self._calibrated_seen = False  # the buffer read once on the host, not on every forward

    def needs_calibration(self) -> bool:
        """True until calibrated; reads the (device) buffer only until it is True."""
        if not self._calibrated_seen:
            self._calibrated_seen = bool(self.calibrated)
        return not self._calibrated_seen

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._calibrated_seen = False  # re-read the loaded buffer

    def reset(self, init: str, share: float) -> None:
        """Fresh weights for ``selector_init`` ``init``: :meth:`reset_layers`; with
        ``target`` or ``calibrated`` the output bias is ``logit(share)`` (keep about ``share`` of
        the tokens it may keep); ``calibrated`` also calibrates on the first training batch."""
        if init not in SELECTOR_INITS:
            raise ValueError(f"unknown selector_init {init!r}; expected one of {SELECTOR_INITS}")
        self.reset_layers()
        self.calibrated.fill_(False)
        self._calibrated_seen = False
        self.share = min(max(share, 1e-3), 1 - 1e-3)
        if init != "official":
            gap = math.log(self.share / (1 - self.share))
            with torch.no_grad():
                self.output.bias.copy_(torch.tensor([gap / 2, -gap / 2], dtype=self.output.bias.dtype))

    def reset_layers(self) -> None:
        """The layers' own init (here PyTorch's default init of every layer)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def hidden_layers(self) -> list[nn.Linear]:
        """The selector's own Linear layers before ``output`` (a calibration scales them too)."""
        return [m for m in self.modules() if isinstance(m, nn.Linear) and m is not self.output]

    def _spread_and_score(
        self, x: torch.Tensor, available: Optional[torch.Tensor]
    ) -> tuple[float, torch.Tensor]:
        """The keep-minus-prune logit without the output bias over the available tokens of every
        rank (``torch.distributed``) and its std."""
        b = self.output.bias
        score = self(x, available).float()
        score = score[..., 0] - score[..., 1] - float(b[0] - b[1])
        score = all_gather_rows(score.flatten() if available is None else score[available])
        return (float(score.std()) if score.numel() > 1 else 0.0), score

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, available: Optional[torch.Tensor]) -> tuple[float, float]:
        """Widen the logit spread over the available tokens of ``x`` to ``CALIBRATED_SPREAD`` and
        set the output bias so that ``share`` of them win the argmax. The widening is shared
        evenly by the L Linear layers (each hidden one, weight and bias, times the L-th root of
        the factor; the output layer then exactly to the spread): a selector whose fresh logits
        are tiny (DynamicViT's init: a spread of about 1e-5) then has hidden activations of
        order 1, rather than an output layer scaled by 1e5 that turns each optimiser step into
        a jump of its decisions. Returns the hidden layers' and the output's factors. Under
        ``torch.distributed`` the statistics are those of every rank's tokens together, so all
        ranks end with the same parameters."""
        x = x.detach()
        spread, score = self._spread_and_score(x, available)
        hidden_scale, scale = 1.0, 1.0
        if spread > 0:
            hidden = self.hidden_layers()
            if hidden:
                hidden_scale = (CALIBRATED_SPREAD / spread) ** (1 / (len(hidden) + 1))
                for layer in hidden:
                    layer.weight.mul_(hidden_scale)
                    if layer.bias is not None:
                        layer.bias.mul_(hidden_scale)
                spread, score = self._spread_and_score(x, available)
        if spread > 0:
            scale = CALIBRATED_SPREAD / spread
            self.output.weight.mul_(scale)
            gap = -float(torch.quantile(score * scale, 1 - self.share))
            self.output.bias.copy_(torch.tensor([gap / 2, -gap / 2], dtype=self.output.bias.dtype))
        self.calibrated.fill_(True)
        self._calibrated_seen = True
        return hidden_scale, scale


@SELECTORS.register_module("mlp")
class MlpSelector(Selector):
    """LayerNorm -> Linear(D, D/4) -> GELU -> Linear(D/4, 2), as the official ``SelectiveModule``
    (whose LayerNorm keeps PyTorch's default eps)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim // 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // 4, 2)

    @property
    def output(self) -> nn.Linear:
        return self.fc2

    def forward(self, x: torch.Tensor, available: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


@SELECTORS.register_module("gating")
class GatingSelector(Selector):
    """DynamicViT's predictor (``PredictorLG``): per-token local features concatenated with a
    global feature.

    ``LayerNorm -> Linear(D, D) -> GELU`` gives ``D/2`` local and ``D/2`` global channels; the
    global half is averaged over the ``available`` tokens and broadcast back; a 3-layer MLP
    ``D -> D/2 -> D/4 -> 2`` gives the logits. As in DynamicViT, the LayerNorm keeps PyTorch's
    eps (1e-5) and fresh layers start as DynamicViT's ViT init (truncated normal std 0.02, zero
    biases; :meth:`reset_layers`).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_mlp = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
        )

    @property
    def output(self) -> nn.Linear:
        return self.out_mlp[-1]

    def reset_layers(self) -> None:
        """DynamicViT's init: Linear weights truncated normal (std 0.02), biases 0, LayerNorm 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def forward(self, x: torch.Tensor, available: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.in_proj(x)
        local, glob = h.chunk(2, dim=-1)
        if available is None:
            glob = glob.mean(dim=1, keepdim=True)
        else:
            w = available.to(glob.dtype).unsqueeze(-1)
            glob = (glob * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp(min=1)
        return self.out_mlp(torch.cat([local, glob.expand_as(local)], dim=-1))


class PluginSelector(Selector):
    """A registered selector that is a plain ``nn.Module`` (``forward(x, available) -> (B, N, 2)``),
    followed by a learned 2x2 affine map of its logits (``output``, identity when fresh), which
    ``selector_init`` sets (``target``/``calibrated`` bias, calibrated scale); ``selector_init``
    leaves the user's module (``inner``) as the backbone's init made it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.output = nn.Linear(2, 2)
        self._identity()

    def _identity(self) -> None:
        with torch.no_grad():
            self.output.weight.copy_(torch.eye(2))
            self.output.bias.zero_()

    def reset_layers(self) -> None:
        """The plug-in keeps its own weights; the affine map starts as the identity."""
        self._identity()

    def hidden_layers(self) -> list[nn.Linear]:
        """None: a calibration scales the affine map only, never the user's module."""
        return []

    def forward(self, x: torch.Tensor, available: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = self.inner(x, available)
        if logits.shape != (*x.shape[:2], 2):
            raise ValueError(
                f"selector {type(self.inner).__name__} returned logits of shape {tuple(logits.shape)}; "
                f"a selector must return (B, N, 2) = {(*x.shape[:2], 2)} (index 0: keep, 1: prune)"
            )
        return self.output(logits)


def selector_names() -> tuple[str, ...]:
    """Names of the registered selectors: the built-in ones, then plug-ins in registration order."""
    return tuple(SELECTORS.module_dict)


def build_selector(kind: str, dim: int) -> Selector:
    """The selector registered as ``kind`` for tokens of width ``dim`` (a plain ``nn.Module``
    plug-in is wrapped in :class:`PluginSelector`)."""
    cls = SELECTORS.module_dict.get(kind)
    if cls is None:
        raise ValueError(
            f"unknown selector {kind!r}; registered: {', '.join(selector_names())}. A plug-in registers "
            "itself with @SELECTORS.register_module('name') in a module the config imports"
        )
    sel = cls(dim)
    return sel if isinstance(sel, Selector) else PluginSelector(sel)


#: how a method's code turns a share into a token count (SViT: ``round``; DynamicViT and Evo-ViT
#: take ``int(r*N)``, a floor; EViT ``math.ceil``).
ROUNDINGS = ("round", "floor", "ceil")


def num_kept(keep_ratio: float, num_tokens: int, rounding: str = "round") -> int:
    """Tokens kept per image under the fixed rate: ``r*N`` rounded by ``rounding``, at least 1
    (floor and ceiling forgive float error: ``0.49 / 0.7 * 10`` counts as 7)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    n = keep_ratio * num_tokens
    if rounding == "floor":
        return max(1, math.floor(n + 1e-9))
    return max(1, math.ceil(n - 1e-9) if rounding == "ceil" else round(n))


def logistic_noise(score: torch.Tensor) -> torch.Tensor:
    """Logistic noise like ``score`` (float32): the difference of two Gumbel samples, so that
    ``score + noise > 0`` is exactly a hard 2-way Gumbel-softmax decision."""
    u = torch.rand_like(score, dtype=torch.float32).clamp_(1e-6, 1 - 1e-6)
    return u.log() - (-u).log1p()


def _topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    idx = score.topk(k, dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter(1, idx, torch.ones_like(idx, dtype=torch.bool))


def keep_decision(
    logits: torch.Tensor,
    available: Optional[torch.Tensor],
    keep_ratio: float,
    rate: str,
    training: bool,
    tau: float = 1.0,
    sample: Optional[bool] = None,
    rounding: str = "round",
) -> torch.Tensor:
    """Keep decision ``(B, N)`` from logits ``(B, N, 2)``; see the module docstring.

    ``available`` (bool ``(B, N)`` or None for all) marks the tokens that may be kept;
    ``keep_ratio`` is the target share of all N tokens (used by the fixed rate at inference);
    ``sample`` adds Gumbel noise (default: in training only); ``rounding`` turns the fixed rate's
    share into a count (:func:`num_kept`). Returns a straight-through float32
    tensor when ``training``, else a bool tensor.
    """
    score = logits[..., 0].float() - logits[..., 1].float()
    if training if sample is None else sample:
        score = (score + logistic_noise(score)) / tau
    z = score.detach() if available is None else score.detach().masked_fill(~available, float("-inf"))
    if rate == "fixed" and not training:
        return _topk_mask(z, num_kept(keep_ratio, int(logits.shape[1]), rounding))
    keep = z > 0
    empty = ~keep.any(dim=1, keepdim=True)  # keep at least the best token of every image
    keep = keep | (_topk_mask(z, 1) & empty)
    if not training:
        return keep
    soft = score.sigmoid()
    return keep.float() - soft.detach() + soft
