"""Dense vs pruned backbones (plain PrunedViT and the SViT-Adapter) on a GPU: a table and a JSON file.

    python scripts/gpu_bench.py                      # CUDA, deit-small 800x1344, < 4 min on an H100
    python scripts/gpu_bench.py --device cpu --quick # CI-size run of the same code on a tiny model

Needs only torch, timm and mmengine (no MMDetection/MMCV): it imports the backbone modules and
the timing helpers of prunebench from this checkout's ``src/``. Where MMCV's compiled CUDA op is
not installed, the adapter's deformable attention runs prunebench's gather form (the table says
which). Models per backbone family: dense, pruned with the fixed rate, pruned with the dynamic
rate (per-image counts at batch > 1: the ``loop`` and the ``padded`` sparse paths side by side),
the paper's reference schedule, random weights. Each group (family x batch x dtype x
eager/compiled) times its models in interleaved rounds (CUDA events after a synchronize); rows
give the median, the mean of the middle 50 % and p90 in ms, and the speed-up over dense in the
same group. ``compile``: every ViT block goes through ``torch.compile`` (dynamic shapes);
selectors, gather/scatter, the adapter and the pyramid stay eager.

Selectors are ``calibrated`` on one untimed random image of the benchmark size (a training-mode
forward) to keep their stage's target share. On random inputs every image would then keep about
the same count, so the dynamic models' selectors add a per-image offset to the keep-minus-prune
logit, spread over +-0.25 of the calibrated logit spread across the batch: images keep different
counts around the target, as trained dynamic selectors do on real images. Selectors, keep
decisions and sparse paths are otherwise the real ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prunebench.axes import REFERENCE_LAYERS, REFERENCE_RATIOS
from prunebench.bench import autocast, latency_stats, time_calls
from prunebench.models.ms_deform_attn import deform_attn_backend
from prunebench.models.pruned_vit import PrunedViT
from prunebench.models.selectors import CALIBRATED_SPREAD
from prunebench.models.vit_adapter import PrunedViTAdapter

FAMILIES = {"plain": PrunedViT, "adapter": PrunedViTAdapter}

FULL = dict(
    arch="deit-small",
    input_size=(800, 1344),
    batches=(1, 8),
    warmup=10,
    repeats=40,
    backbone={"plain": {}, "adapter": {}},
    prune_layers=REFERENCE_LAYERS,
    keep_ratios=REFERENCE_RATIOS,
)
QUICK = dict(
    arch="deit-tiny",
    input_size=(128, 192),
    batches=(1, 2),
    warmup=1,
    repeats=3,
    backbone={
        "plain": dict(embed_dim=96, depth=4, num_heads=3, out_channels=64),
        "adapter": dict(
            embed_dim=96,
            depth=4,
            num_heads=3,
            conv_inplane=16,
            interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        ),
    },
    prune_layers=[1, 2, 3],
    keep_ratios=[0.7, 0.49, 0.343],
)
SPREAD = 0.25 * CALIBRATED_SPREAD  # per-image keep-logit offsets across a batch: +-SPREAD


def _spread_per_image(module, args, logits: torch.Tensor) -> torch.Tensor:
    """Selector forward hook: image b of B gets ``SPREAD * linspace(-1, 1, B)[b]`` added to its
    keep-minus-prune logit (see the module docstring)."""
    B = logits.shape[0]
    if B == 1:
        return logits
    off = SPREAD * torch.linspace(-1, 1, B, device=logits.device, dtype=logits.dtype)[:, None]
    return logits + torch.stack([off / 2, -off / 2], dim=-1)


def build(cfg: dict, family: str, device: torch.device) -> dict[str, torch.nn.Module]:
    """Dense, fixed-rate and dynamic-rate (loop / padded) backbones of ``family`` sharing all
    weights but the selectors' (the two dynamic ones share theirs too)."""
    torch.manual_seed(0)
    cls, kwargs = FAMILIES[family], cfg["backbone"][family]
    dense = cls(cfg["arch"], **kwargs)
    models = {"dense": dense}
    schedule = dict(
        prune_layers=cfg["prune_layers"], keep_ratios=cfg["keep_ratios"], selector_init="calibrated"
    )
    img = torch.randn(1, 3, *cfg["input_size"], generator=torch.Generator().manual_seed(0)).to(device)
    for name, rate, mode in [
        ("fixed", "fixed", "auto"),
        ("dynamic loop", "dynamic", "loop"),
        ("dynamic padded", "dynamic", "padded"),
    ]:
        m = cls(cfg["arch"], rate=rate, sparse_mode=mode, **schedule, **kwargs)
        if name == "dynamic padded":  # the same selectors as the loop variant
            m.load_state_dict(models["dynamic loop"].state_dict())
        else:
            m.load_state_dict(dense.state_dict(), strict=False)  # shared weights; fresh selectors
            with torch.no_grad():
                m.to(device).train()(img)  # calibrates the fresh selectors
        if rate == "dynamic":
            for sel in m.selectors:
                sel.register_forward_hook(_spread_per_image)
        models[name] = m
    return {k: m.to(device).eval() for k, m in models.items()}


def run_group(
    models: dict, img: torch.Tensor, family: str, dtype: str, compiled: bool, cfg: dict, device: torch.device
) -> list[dict]:
    """Time the models on ``img`` (interleaved rounds); one row per model."""

    def call(m):
        with autocast(device, dtype):
            m(img)

    ms = time_calls({k: [partial(call, m)] for k, m in models.items()}, device, cfg["warmup"], cfg["repeats"])
    dense_median = latency_stats(ms["dense"])["median"]
    rows = []
    for name, m in models.items():
        stats = latency_stats(ms[name])
        masks = m.last_keep_masks
        keep = [float(k.float().mean()) for k in masks]
        counts = masks[-1].sum(1).tolist() if masks else []
        rows.append(
            {
                "family": family,
                "model": name.split()[0],
                "sparse_mode": name.split()[1] if " " in name else None,
                "batch": img.shape[0],
                "dtype": dtype,
                "compile": compiled,
                "ms": stats,
                "ms_per_image": stats["median"] / img.shape[0],
                "speedup": dense_median / stats["median"],
                "keep_ratio": sum(keep) / len(keep) if keep else 1.0,
                "last_layer_counts": counts,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny model and input, few repeats (CI)")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile'd blocks (default: on CUDA only)",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=220.0,
        help="skip a group when the time so far plus the last group's would exceed this",
    )
    ap.add_argument("--out", default="gpu_bench.json", help="JSON output file")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = QUICK if args.quick else FULL
    compile_too = device.type == "cuda" if args.compile is None else args.compile
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch._dynamo.config.cache_size_limit = 64  # Block graphs per (mask, dtype, shape) variant

    t0 = time.perf_counter()
    H, W = cfg["input_size"]
    groups = [  # essential first: the time budget skips the last ones
        (family, b, dt, c)
        for c in ([False, True] if compile_too else [False])
        for family in FAMILIES
        for b in cfg["batches"]
        for dt in ("fp32", "bf16")
    ]
    rows, skipped, models, built, last_s = [], [], {}, None, 0.0
    for family, batch, dtype, compiled in groups:
        if time.perf_counter() - t0 + last_s > args.budget_s:
            skipped.append({"family": family, "batch": batch, "dtype": dtype, "compile": compiled})
            continue
        if built != (family, compiled):
            models, built = build(cfg, family, device), (family, compiled)
            for blk in (b for m in models.values() for b in m.blocks) if compiled else ():
                blk.compile(dynamic=True)
        group = {k: m for k, m in models.items() if not (batch == 1 and k == "dynamic loop")}
        img = torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(batch)).to(device)
        tg = time.perf_counter()
        rows += run_group(group, img, family, dtype, compiled, cfg, device)
        last_s = time.perf_counter() - tg
        mode = "compiled" if compiled else "eager"
        print(f"  {family} batch {batch} {dtype} {mode}: {last_s:.1f} s", file=sys.stderr)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = {
        "device": dev,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "arch": cfg["arch"],
        "deform_attn": deform_attn_backend(device),
        "input_size": [H, W],
        "prune_layers": list(cfg["prune_layers"]),
        "keep_ratios": list(cfg["keep_ratios"]),
        "warmup": cfg["warmup"],
        "repeats": cfg["repeats"],
        "rows": rows,
        "skipped": skipped,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(table(out))


def table(out: dict) -> str:
    """The rows as a Markdown table."""
    lines = [
        f"{out['arch']} backbone {out['input_size'][0]}x{out['input_size'][1]} on {out['device']} "
        f"(torch {out['torch']}), {out['repeats']} timed rounds after {out['warmup']} warm-up; adapter's "
        f"deformable attention: {out['deform_attn']}"
        + (" (MMCV's compiled CUDA op not installed)" if out["deform_attn"] == "gather" else ""),
        "",
        "| backbone | batch | dtype | mode | model | median ms | mid-50% mean | p90 | ms/image | speed-up "
        "| keep |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        model = r["model"] + (f" ({r['sparse_mode']})" if r["sparse_mode"] else "")
        s = r["ms"]
        mode = "compile" if r["compile"] else "eager"
        lines.append(
            f"| {r['family']} | {r['batch']} | {r['dtype']} | {mode} | {model} | {s['median']:.2f} | "
            f"{s['mid50_mean']:.2f} | {s['p90']:.2f} | {r['ms_per_image']:.2f} | "
            f"{r['speedup']:.2f}x | {r['keep_ratio']:.3f} |"
        )
    for s in out["skipped"]:
        lines.append(
            f"skipped (time budget): {s['family']} batch {s['batch']} {s['dtype']} "
            f"{'compile' if s['compile'] else 'eager'}"
        )
    lines.append(f"total {out['total_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
