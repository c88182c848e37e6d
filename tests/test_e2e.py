"""End-to-end: a tiny sweep really trains, tests and benchmarks; killed runs resume."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prunebench.results import read_json
from prunebench.sweep import prepare, run_sweep

pytestmark = pytest.mark.slow

GRID = """\
name: e2e
base: mask-rcnn-vit-cpu
backbone: {{{backbone}, prune_layers: [1], keep_ratios: [0.5]}}
data: {{type: synthetic, num_train: 8, num_val: 4, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], batch_size: 2, cache_dir: {cache}}}
schedule: {{dense: {{iters: {dense_iters}}}, finetune: {{iters: 2}}, warmup_iters: 1, checkpoint_interval: 2}}
bench: {{warmup: 1, repeats: 2}}
axes:
  pruned_tokens: [preserve]
  reactivation: [true]
  rate: [dynamic]
  selector: [mlp]
"""
METRIC_KEYS = {"run_id", "axes", "box_ap", "mask_ap", "coco", "latency_ms", "keep_ratio", "flops_g", "env"}


BACKBONES = {
    "plain": "embed_dim: 32, depth: 2, num_heads: 2, out_channels: 16",
    "adapter": "family: adapter, embed_dim: 48, depth: 2, num_heads: 3, conv_inplane: 8, "
    "interaction_indexes: [[0, 0], [1, 1]]",
}


def make_grid(tmp_path: Path, dense_iters: int = 4, family: str = "plain") -> Path:
    path = tmp_path / "e2e.yaml"
    path.write_text(
        GRID.format(cache=tmp_path / "cache", dense_iters=dense_iters, backbone=BACKBONES[family])
    )
    return path


@pytest.mark.parametrize("family", ["plain", "adapter"])
def test_two_point_sweep_writes_complete_metrics(tmp_path, family):
    states = run_sweep(make_grid(tmp_path, family=family), tmp_path / "results")
    assert sorted(states.values()) == ["done", "done"], states
    sweep_dir = tmp_path / "results" / "e2e"
    for run_id in states:
        m = read_json(sweep_dir / run_id / "metrics.json")
        assert set(m) >= METRIC_KEYS, set(m)
        assert 0 <= m["box_ap"] <= 100 and 0 <= m["mask_ap"] <= 100
        assert "bbox_mAP" in m["coco"] and "segm_mAP" in m["coco"]
        assert m["latency_ms"]["backbone"] > 0 and m["latency_ms"]["full"] > 0
        assert m["env"]["mmdet"] == "3.3.0" and m["family"] == family
        assert m["selector_init"] == (None if run_id.startswith("dense") else "official")
        assert read_json(sweep_dir / run_id / "status.json")["state"] == "done"
    pruned = next(r for r in states if r.startswith("preserve"))
    m = read_json(sweep_dir / pruned / "metrics.json")
    assert len(m["keep_ratio"]["per_layer"]) == 1 and 0 < m["keep_ratio"]["mean"] < 1
    assert m["keep_ratio"]["images"] == 4 and m["flops_g"]["images"] == 4  # the traces count no image
    log = (sweep_dir / pruned / "train.log").read_text()
    assert "Load checkpoint from" in log  # the finetune started from the dense weights
    # a second sweep does nothing: finished runs are skipped, metrics untouched
    mtimes = {r: (sweep_dir / r / "metrics.json").stat().st_mtime for r in states}
    assert run_sweep(make_grid(tmp_path, family=family), tmp_path / "results") == states
    assert mtimes == {r: (sweep_dir / r / "metrics.json").stat().st_mtime for r in states}


def job_processes(run_dir: Path) -> list[int]:
    """The run's job processes: live (not zombie) processes whose command line names ``run_dir``,
    less their own children (dataloader workers)."""
    parents = {}
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if str(run_dir).encode() in cmd and state != "Z":
            parents[int(proc.name)] = int(ppid)
    return sorted(pid for pid, ppid in parents.items() if ppid not in parents)


def test_kill_9_of_the_sweep_then_rerun_resumes_with_one_job_at_a_time(tmp_path):
    grid = make_grid(tmp_path, dense_iters=40)
    sweep_dir = tmp_path / "results" / "e2e"
    cli = Path(sys.executable).with_name("prunebench")
    sweep = subprocess.Popen(
        [str(cli), "sweep", str(grid), "--results", str(tmp_path / "results")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list(sweep_dir.glob("dense-*/work_dir/last_checkpoint")) and time.time() < deadline:
        time.sleep(0.5)
    (dense_dir,) = sweep_dir.glob("dense-*")
    assert sweep.poll() is None, "sweep ended before it could be killed"
    (job,) = job_processes(dense_dir)
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 10
    while job_processes(dense_dir) and time.time() < deadline:  # the job dies with its sweep
        time.sleep(0.1)
    assert job_processes(dense_dir) == [], f"job {job} outlived its sweep"
    marker = dense_dir / "work_dir" / "last_checkpoint"
    saved = int(Path(marker.read_text().strip()).stem.split("_")[1])
    assert saved < 40 and not (dense_dir / "metrics.json").exists()

    seen: list[int] = []
    stop = threading.Event()

    def watch():  # how many job processes work on the dense run at once, while the rerun goes
        while not stop.is_set():
            seen.append(len(job_processes(dense_dir)))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        states = run_sweep(grid, tmp_path / "results")
    finally:
        stop.set()
        watcher.join()
    assert set(states.values()) == {"done"}
    assert max(seen) == 1
    log = (dense_dir / "train.log").read_text()
    assert f"resumed epoch: 0, iter: {saved}" in log  # continued, did not start over
    assert log.count("bbox_mAP_copypaste") == 1  # tested (and finished) once


def test_a_diverged_run_fails_its_finetune_is_skipped_and_the_rest_go_on(tmp_path):
    grid = make_grid(tmp_path, dense_iters=6)
    grid.write_text(grid.read_text() + "  optim_wrapper.optimizer.lr: [0.0001, 1.0e+6]\n")
    states = run_sweep(grid, tmp_path / "results")
    sweep_dir = tmp_path / "results" / "e2e"
    specs = {r: read_json(sweep_dir / r / "run.json") for r in states}
    by_lr = {(s["stage"], s["axes"]["optim_wrapper.optimizer.lr"]): r for r, s in specs.items()}
    assert states[by_lr["dense", 1e-4]] == "done" and states[by_lr["finetune", 1e-4]] == "done"
    assert states[by_lr["dense", 1e6]] == "failed" and states[by_lr["finetune", 1e6]] == "skipped"
    error = read_json(sweep_dir / by_lr["dense", 1e6] / "status.json")["error"]
    stopped = int(re.search(r"TrainingDiverged: training diverged at iteration (\d) of 6", error)[1])
    assert stopped < 6 and "non-finite loss terms" in error and "Fix: lower the stage's lr" in error
    assert not (sweep_dir / by_lr["dense", 1e6] / "metrics.json").exists()
    skipped = read_json(sweep_dir / by_lr["finetune", 1e6] / "status.json")["reason"]
    assert skipped.startswith(f"dependency {by_lr['dense', 1e6]} failed (TrainingDiverged: training diverged")
    for run_id in (by_lr["dense", 1e-4], by_lr["finetune", 1e-4]):
        text = (sweep_dir / run_id / "metrics.json").read_text()
        metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
        assert metrics["checkpoint"] == f"work_dir/iter_{6 if run_id == by_lr['dense', 1e-4] else 2}.pth"


def mmdet_tool(name: str, *args) -> subprocess.CompletedProcess:
    """MMDetection's own ``tools/<name>`` on ``args``, with no environment variable that would let
    torch load checkpoints without ``prunebench.models``' allow-list."""
    import mmdet

    tool = Path(mmdet.__file__).parent / ".mim" / "tools" / name
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    cmd = [sys.executable, str(tool), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("family", ["plain", "adapter"])
def test_generated_configs_run_with_mmdetection_tools(tmp_path, family):
    """MMDetection's own tools/train.py and tools/test.py run a dense and a finetune config (the
    finetune's ``load_from`` included) with no environment variable: ``prunebench.models``, which
    every config imports, lets torch's weights-only loading read MMEngine checkpoints."""
    sweep = prepare(make_grid(tmp_path, family=family), tmp_path / "results")
    for spec, ckpt in ((sweep.runs[0], "iter_4.pth"), (sweep.runs[1], "iter_2.pth")):
        run_dir = sweep.sweep_dir / spec.run_id
        train = mmdet_tool("train.py", run_dir / "config.py")
        assert train.returncode == 0, train.stderr[-3000:]
        if spec.stage == "finetune":
            assert "Load checkpoint from" in train.stdout + train.stderr
        test = mmdet_tool("test.py", run_dir / "config.py", run_dir / "work_dir" / ckpt)
        assert test.returncode == 0, test.stderr[-3000:]
        assert "bbox_mAP_copypaste" in test.stdout + test.stderr
        assert "segm_mAP_copypaste" in test.stdout + test.stderr


# MMEngine's pytorch launcher selects a CUDA device even for gloo; on a CPU-only machine there is none.
CPU_DIST_TRAIN = """\
import runpy, torch
if not torch.cuda.is_available():
    torch.cuda.set_device = lambda device: None
runpy.run_path({train!r}, run_name="__main__")
"""


def test_a_config_written_for_2_gpus_trains_its_total_batch_with_dist_training(tmp_path):
    """A config written for 2 GPUs (total batch 4: 2 per GPU) under MMDetection's tools/train.py
    with ``torch.distributed.run --nproc_per_node 2`` (CPU, gloo): the log shows 2 processes and
    2 iterations per epoch over the 8 training images, i.e. 4 images per step in all."""
    import mmdet

    grid = make_grid(tmp_path)
    grid.write_text(
        grid.read_text().replace("batch_size: 2", "batch_size: 4").replace("iters: 4", "epochs: 1")
    )
    sweep = prepare(grid, tmp_path / "results", gpus=2)
    config = sweep.sweep_dir / sweep.runs[0].run_id / "config.py"
    assert f"bash tools/dist_train.sh {config} 2\n" in config.read_text()
    train = tmp_path / "cpu_dist_train.py"
    train.write_text(CPU_DIST_TRAIN.format(train=str(Path(mmdet.__file__).parent / ".mim/tools/train.py")))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + [str(train), str(config), "--launcher", "pytorch", "--cfg-options"]
        + ["env_cfg.dist_cfg.backend=gloo", "model_wrapper_cfg.device_ids=None"],  # DDP of a CPU model
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Distributed training: True" in log and "GPU number: 2" in log
    assert "Epoch(train) [1][2/2]" in log  # 4 of 8 images a step; the total per GPU: [1][1/1]
