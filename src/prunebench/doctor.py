"""``prunebench doctor``: is the installed stack complete and does it really run?"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

FIX_SETUP = "run `make setup` (it rebuilds .venv with the pinned stack)"
PACKAGES = [
    ("torch", "2.9.1"),
    ("torchvision", "0.24.1"),
    ("mmcv", "2.1.0"),
    ("mmdet", "3.3.0"),
    ("mmengine", "0.10.7"),
    ("timm", None),
    ("pycocotools", None),
]


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _check_ops() -> str:
    import torch
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f"nms kept {keep.tolist()}, expected [0, 2]")
    feat = torch.arange(16.0).view(1, 1, 4, 4)
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(
        feat, torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    )
    if out.shape != (1, 1, 2, 2) or not torch.isfinite(out).all():
        raise RuntimeError(f"RoIAlign returned {tuple(out.shape)}")
    return "nms and RoIAlign ran on CPU" + (" (CUDA ops built)" if _cuda_ops() else "")


def _cuda_ops() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    from mmcv.ops import nms

    nms(torch.rand(4, 4, device="cuda").cumsum(1), torch.rand(4, device="cuda"), 0.5)
    return True


def _check_cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        return f"not available (CPU only; torch built for CUDA {torch.version.cuda})"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} device(s): " + ", ".join(names)


def _check_models() -> str:
    from mmdet.registry import MODELS

    import prunebench.models  # noqa: F401

    from .axes import FAMILIES
    from .models.ms_deform_attn import deform_attn_backend

    names = [*FAMILIES.values(), "PrunedDetector", "PrunedMaskRCNN"]
    missing = [m for m in names if MODELS.get(m) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not registered")
    forms = (
        "MMCV's CUDA op on GPUs"
        if deform_attn_backend("cuda") == "mmcv-cuda"
        else "CPU forms only (MMCV built without CUDA ops)"
    )
    return f"{', '.join(names)} registered in mmdet MODELS; deformable attention: {forms}"


def checks() -> list[tuple[str, Callable[[], str], str, bool]]:
    """(name, check returning a detail, fix, required)."""

    def python() -> str:
        if platform.python_version_tuple()[:2] != ("3", "11"):
            raise RuntimeError(f"{platform.python_version()} found, 3.11 required")
        return platform.python_version()

    rows = [("python", python, "use Python 3.11 (PYTHON=python3.11 make setup)", True)]
    for pkg, pin in PACKAGES:

        def check(pkg=pkg, pin=pin):
            v = _version(pkg)
            importlib.import_module(pkg)
            if pin and not v.startswith(pin):
                raise RuntimeError(f"{v} installed, {pin} pinned")
            return v

        rows.append((pkg, check, FIX_SETUP, True))
    rows += [
        (
            "mmcv compiled ops",
            _check_ops,
            "MMCV ops missing: run `make setup` (builds MMCV with MMCV_WITH_OPS=1)",
            True,
        ),
        ("cuda", _check_cuda, "install an NVIDIA driver to use GPUs", False),
        ("prunebench models", _check_models, FIX_SETUP, True),
    ]
    return rows


def run_doctor(console: Console | None = None) -> int:
    """Print the checks as a Rich table; return 1 when a required check failed, else 0."""
    console = console or Console()
    table = Table(title="prunebench doctor")
    for col in ("check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    failed = 0
    for name, check, fix, required in checks():
        try:
            table.add_row(name, "[green]ok[/]", check(), "")
        except Exception as e:
            failed += required
            status = "[red]FAIL[/]" if required else "[yellow]warn[/]"
            table.add_row(name, status, f"{type(e).__name__}: {e}"[:200], fix)
    console.print(table)
    return 1 if failed else 0
