"""``prunebench weights``: what an ImageNet ViT checkpoint covers of a pruned backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..axes import ARCHS, FAMILIES, reference_schedule
from .deit_weights import WeightsError, load_pretrained
from .pruned_vit import PrunedViT
from .vit_adapter import PrunedViTAdapter

_BACKBONES = {"plain": PrunedViT, "adapter": PrunedViTAdapter}


def _group(keys: list[str]) -> list[tuple[str, int]]:
    """Keys grouped by module (``blocks.3.attn.qkv.weight`` -> ``blocks``), with counts."""
    groups: dict[str, int] = {}
    for k in keys:
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
    return sorted(groups.items())


def check_weights(
    path: Path, arch: str, console, family: str = "plain", layer_scale: Optional[float] = None
) -> int:
    """Load ``path`` into a pruned ``arch`` backbone of ``family`` (reference schedule scaled to its
    depth; ``layer_scale`` as the grid's ``backbone.layer_scale``) as a run would; print a coverage
    table. Returns the exit code: 0 when it loads, 1 when it would not."""
    from rich.markup import escape
    from rich.table import Table

    if arch not in ARCHS or family not in FAMILIES:
        console.print(
            f"[red]error:[/] unknown arch {arch!r} or backbone {family!r}; use one of {', '.join(ARCHS)} "
            f"and one of {', '.join(FAMILIES)}"
        )
        return 1
    cls = _BACKBONES[family]
    layers, ratios = reference_schedule(ARCHS[arch][1])
    model = cls(arch=arch, prune_layers=layers, keep_ratios=ratios, layer_scale=layer_scale)
    try:
        report = load_pretrained(model, path)
    except WeightsError as e:
        console.print(f"[red]would not load:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 1
    console.print(f"[bold]{escape(str(path))}[/] -> {cls.__name__} {arch}", highlight=False, soft_wrap=True)
    table = Table()
    for col in ("", "module", "tensors"):
        table.add_column(col)
    for label, keys, style in (
        ("loaded", report.loaded, "green"),
        ("fresh", report.fresh, "yellow"),
        ("ignored", report.ignored, "dim"),
    ):
        for i, (module, n) in enumerate(_group(keys)):
            table.add_row(f"[{style}]{label}[/]" if i == 0 else "", module, str(n))
    console.print(table)
    for note in report.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    console.print(
        f"[green]ok:[/] every ViT tensor of {arch} comes from the file "
        f"({len(report.loaded)} loaded); {len(report.fresh)} start fresh "
        f"({', '.join(p.strip('.') for p in cls.FRESH)}); "
        f"{len(report.ignored)} ignored. Grid line: `backbone.pretrained: {escape(str(path))}`",
        highlight=False,
        soft_wrap=True,
    )
    return 0
