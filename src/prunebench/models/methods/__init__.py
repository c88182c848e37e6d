"""Prior token-pruning methods' mechanisms, as a backbone's ``method``.

``method="selector"`` (default) is the learned-selector policy of the four axes (SViT, DynamicViT
and plug-in selectors, :mod:`prunebench.models.registry`). The others rank tokens by the
attention of a class token that the method adds (:mod:`.base`) and learn nothing to select:

* ``evit``: top-k by class attention, the rest fused into one token (:mod:`.evit`);
* ``evo-vit``: slow-fast token evolution (:mod:`.evo_vit`);
* ``ats``: adaptive token sampling, a per-image count (:mod:`.ats`).

The merging methods ``tome`` and ``atc`` merge tokens instead (:mod:`.token_merging`, with
:mod:`.merging` and :mod:`.clustering`); they add no parameters.

The grid's ``method`` presets (:mod:`prunebench.presets`) pick one of these with its schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .ats import ATS
from .base import ClassAttentionMethod
from .evit import EViT
from .evo_vit import EvoViT
from .token_merging import TokenMerging

__all__ = ["MECHANISMS", "MERGING", "METHODS", "ClassAttentionMethod", "TokenMerging", "build_mechanism"]

#: method -> its class-attention mechanism.
MECHANISMS: dict[str, type[ClassAttentionMethod]] = {"evit": EViT, "evo-vit": EvoViT, "ats": ATS}
#: the token-merging methods (:class:`TokenMerging`).
MERGING: tuple[str, ...] = ("tome", "atc")
#: the values of a backbone's ``method`` argument.
METHODS: tuple[str, ...] = ("selector", *MECHANISMS, *MERGING)


def build_mechanism(
    method: str,
    dim: int,
    prune_layers: Sequence[int],
    keep_ratios: Sequence[float],
    pruned_tokens: str,
    **merging,
) -> Optional[ClassAttentionMethod | TokenMerging]:
    """The mechanism of ``method`` (None for the selectors); ValueError for an unknown method or
    a ``pruned_tokens`` value the method does not allow. ``merging``: ``linkage`` and
    ``proportional_attention`` of the merging methods."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "selector":
        return None
    cls = TokenMerging if method in MERGING else MECHANISMS[method]
    if pruned_tokens not in cls.PRUNED_TOKENS:
        raise ValueError(
            f"method {method!r} needs pruned_tokens in {cls.PRUNED_TOKENS}, got {pruned_tokens!r}"
        )
    if cls is TokenMerging:
        return TokenMerging(method, prune_layers, keep_ratios, **merging)
    return cls(dim, prune_layers, keep_ratios)
