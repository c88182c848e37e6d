"""Token keep maps: which tokens each pruning layer kept, drawn over the input image (where tokens
are merged, ``tome`` / ``atc`` / ``pruned_tokens: merge``: one colour per merged token)."""

from __future__ import annotations

import math
from pathlib import Path

from .axes import METHOD_AXIS
from .checkpoint import allow_mmengine_checkpoints
from .results import CONFIG_FILE, RUN_FILE, WORK_DIR, read_json

_DEFAULT_NORM = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32
)


class VizError(Exception):
    """A problem with the inputs, worded for the user."""


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run: the one ``work_dir/last_checkpoint`` names, else the
    newest ``work_dir/*.pth``; None when there is none."""
    work = Path(run_dir) / WORK_DIR
    marker = work / "last_checkpoint"
    if marker.is_file():
        named = Path(marker.read_text().strip())
        for path in (work / named.name, named):  # the marker may hold another folder's path
            if path.is_file():
                return path
    ckpts = sorted(work.glob("*.pth"), key=lambda p: p.stat().st_mtime)
    return ckpts[-1] if ckpts else None


def resize_spec(cfg) -> tuple[tuple[int, int] | None, bool]:
    """(scale, keep_ratio) of the first ``Resize`` in the config's test pipeline; (None, True)
    when there is none."""
    loader = cfg.get("test_dataloader") or {}
    pipeline = (loader.get("dataset") or {}).get("pipeline") or cfg.get("test_pipeline") or []
    for step in pipeline:
        if step.get("type") in ("Resize", "mmdet.Resize") and step.get("scale"):
            return tuple(step["scale"]), step.get("keep_ratio", False)
    return None, True


def load_weights(model, bare_backbone: bool, ckpt: Path) -> None:
    """Load an MMEngine checkpoint's ``state_dict`` with ``torch.load(weights_only=True)`` (the
    PyTorch >= 2.6 default, kept: the file may come from anywhere); ``bare_backbone``: keep only
    the detector's ``backbone.*`` weights."""
    import torch

    allow_mmengine_checkpoints()  # process-wide: leaving a `safe_globals` block would undo it
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), str(e)[:200])
        raise VizError(
            f"{ckpt}: cannot load the checkpoint ({type(e).__name__}: {why}); replace it, "
            "or pass the run's config.py to draw with random weights"
        ) from e
    state = {k.removeprefix("module."): v for k, v in data.get("state_dict", data).items()}
    if bare_backbone:
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    if not set(state) & set(model.state_dict()):
        raise VizError(
            f"{ckpt}: none of its weights fit this model (built from the config next to it); "
            "was the checkpoint written by another run?"
        )
    try:
        model.load_state_dict(state, strict=False)  # a dense parent's checkpoint lacks the selectors
    except RuntimeError as e:  # shape mismatches
        raise VizError(f"{ckpt}: its weights do not fit the model of the config next to it ({e})") from e


def load_model(source: Path):
    """(model, backbone, cfg, checkpoint or None) from a run folder or a config file. The model
    may be a detector (``model.backbone``) or a bare pruned backbone."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import prunebench.models  # noqa: F401  (registers the backbones and PrunedMaskRCNN)

    source = Path(source)
    config = source / CONFIG_FILE if source.is_dir() else source
    if not config.is_file():
        raise VizError(
            f"{config}: no such config; pass a run folder (results/<sweep>/<run_id>) "
            "or an MMDetection config file"
        )
    cfg = Config.fromfile(str(config))
    register_all_modules()  # mmdet's registries and default scope (DetDataPreprocessor, FPN, ...)
    model = MODELS.build(cfg.model)
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "last_keep_masks"):
        raise VizError(
            f"{config}: the model's backbone is {type(backbone).__name__}, not a pruned backbone "
            "(it records no keep masks)"
        )
    ckpt = find_checkpoint(source) if source.is_dir() else None
    if ckpt is not None:
        load_weights(model, backbone is model, ckpt)
    return model.eval(), backbone, cfg, ckpt


def preprocess(image_path: Path, cfg):
    """(normalised padded (1, 3, H, W) tensor, resized RGB uint8 image) as the config's test
    pipeline and data preprocessor would make them: resize, normalise, pad to a multiple of 32."""
    import mmcv
    import numpy as np
    import torch

    img = mmcv.imread(str(image_path)) if Path(image_path).is_file() else None  # BGR
    if img is None:
        raise VizError(f"{image_path}: not a readable image (PNG, JPEG, ...)")
    scale, keep_ratio = resize_spec(cfg)
    if scale is not None:
        img = mmcv.imrescale(img, scale) if keep_ratio else mmcv.imresize(img, scale)
    norm = {**_DEFAULT_NORM, **(cfg.get("model", {}).get("data_preprocessor") or {})}
    rgb = np.ascontiguousarray(img[..., ::-1])
    x = torch.from_numpy(rgb if norm["bgr_to_rgb"] else img).permute(2, 0, 1).float()
    x = (x - torch.tensor(norm["mean"]).view(3, 1, 1)) / torch.tensor(norm["std"]).view(3, 1, 1)
    div = norm.get("pad_size_divisor") or 1
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, -w % div, 0, -h % div))
    return x.unsqueeze(0), rgb


def keep_masks(backbone, x) -> tuple[list, list]:
    """Run the backbone in eval mode on ``x``; the (B, N) bool keep mask of each pruning layer and
    its (B, N) cluster of each token where tokens are merged (None elsewhere)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone.to(device).eval()
    with torch.no_grad():
        backbone(x.to(device))
    clusters = getattr(backbone, "last_clusters", None) or [None] * len(backbone.last_keep_masks)
    return [m.cpu() for m in backbone.last_keep_masks], [c if c is None else c.cpu() for c in clusters]


def cluster_colours(assign, seed: int = 0):
    """(N, 3) float RGB in [0, 1]: one random colour per cluster id of ``assign`` (N,)."""
    import numpy as np

    ids = np.asarray(assign)
    palette = np.random.default_rng(seed).uniform(0.15, 1.0, size=(int(ids.max()) + 1, 3))
    return palette[ids]


def draw(
    rgb,
    masks: list,
    layers: list[int],
    grid_hw: tuple[int, int],
    patch: int,
    title: str,
    out: Path,
    clusters: list | None = None,
) -> None:
    """One panel per pruning layer: the image with pruned tokens dimmed and a token grid, or,
    where the layer's tokens are merged (``clusters``), each merged token's positions in one colour.
    ``grid_hw``: the token grid of the padded input (padding tokens are cut off the picture)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h, w = rgb.shape[:2]
    n = len(masks)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows * h / w + 0.6), squeeze=False)
    for ax in axs.flat[n:]:
        ax.axis("off")
    for ax, mask, layer, assign in zip(axs.flat, masks, layers, clusters or [None] * n):
        grid = mask[0].reshape(grid_hw).numpy()
        # token (i, j) covers pixels [i*patch, (i+1)*patch); drop the padding rows/columns.
        kept = np.repeat(np.repeat(grid, patch, 0), patch, 1)[:h, :w]
        shown = np.where(kept[..., None], rgb, (rgb * 0.25).astype(rgb.dtype))
        if assign is not None:
            colour = cluster_colours(assign[0]).reshape(*grid_hw, 3)
            colour = np.repeat(np.repeat(colour, patch, 0), patch, 1)[:h, :w]
            shown = (0.45 * rgb + 0.55 * 255 * colour).astype(rgb.dtype)
        ax.imshow(shown)
        ax.set_xticks(np.arange(0, w, patch) - 0.5, minor=True)
        ax.set_yticks(np.arange(0, h, patch) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=0.2, alpha=0.3)
        ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
        what = "kept" if assign is None else "merged into"
        ax.set_title(
            f"before block {layer + 1}: {what} {int(grid.sum())}/{grid.size} ({grid.mean():.0%})", fontsize=10
        )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def method_label(source: Path, backbone) -> str:
    """What chose the tokens: the run's ``method`` (run.json), else the backbone's mechanism or
    its four axes."""
    run = read_json(Path(source) / RUN_FILE) if Path(source).is_dir() else None
    method = ((run or {}).get("axes") or {}).get(METHOD_AXIS)
    if method is None and backbone.method != "selector":
        method = backbone.method
    if method is not None:
        return f"method {method}"
    react = "reactivation" if backbone.reactivation else "no reactivation"
    return f"{backbone.pruned_tokens}, {react}, {backbone.rate}, {backbone.selector}"


def make_keep_maps(source: Path, image: Path, out: Path) -> dict:
    """Draw the keep maps of the model in ``source`` (a run folder or config) for ``image`` into
    ``out``; returns {"checkpoint", "keep": [ratio per layer], "layers"}. Raises VizError."""
    model, backbone, cfg, ckpt = load_model(source)
    if not backbone.prune_layers:
        raise VizError(
            f"{source}: the backbone has no pruning layers (prune_layers=[], the dense "
            "run); every token is kept, so there is nothing to show"
        )
    x, rgb = preprocess(image, cfg)
    masks, clusters = keep_masks(backbone, x)
    patch = backbone.patch_size
    grid_hw = tuple(math.ceil(s / 32) * 32 // patch for s in x.shape[-2:])  # PrunedViT pads to 32
    weights = f"weights: {ckpt.name}" if ckpt else "RANDOM WEIGHTS (no checkpoint)"
    title = (
        f"{Path(source).name} ({method_label(source, backbone)}) on {Path(image).name} "
        f"(input {rgb.shape[1]}x{rgb.shape[0]} px) — {weights}"
    )
    draw(rgb, masks, backbone.prune_layers, grid_hw, patch, title, Path(out), clusters)
    return {
        "checkpoint": ckpt,
        "layers": list(backbone.prune_layers),
        "keep": [float(m.float().mean()) for m in masks],
    }


def run_viz(source: Path, image: Path, out: Path) -> int:
    """``prunebench viz``: returns the exit code (2 for bad inputs)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        result = make_keep_maps(source, image, out)
    except VizError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    if result["checkpoint"] is None:
        console.print(
            f"[yellow]warning:[/] no checkpoint for {escape(str(source))} (none in its {WORK_DIR}/): "
            "weights are RANDOM, so the maps show an untrained selector's choices"
        )
    keep = ", ".join(f"block {i + 1}: {k:.0%}" for i, k in zip(result["layers"], result["keep"]))
    console.print(f"wrote {escape(str(out))} (kept {keep})")
    return 0
