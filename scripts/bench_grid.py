"""Time expanding a ~1,000-run grid and writing all its run folders and configs.

.venv/bin/python scripts/bench_grid.py
"""

import statistics
import tempfile
import time
from pathlib import Path

from prunebench.grid import load_grid
from prunebench.spec import expand
from prunebench.sweep import prepare

GRID = """\
name: big
base: mask-rcnn-vit-cpu
data: {{type: synthetic, num_train: 4, num_val: 2, image_size: [64, 64], cache_dir: {cache}}}
schedule: {{dense: {{iters: 10}}, finetune: {{iters: 5}}}}
axes:
  pruned_tokens: [discard, preserve]
  reactivation: [false, true]
  rate: [fixed, dynamic]
  selector: [mlp, gating]
  optim_wrapper.optimizer.lr: [0.1, 0.01, 0.001, 0.0001, 0.00001, 0.2, 0.02, 0.002, 0.0002, 0.00002]
seeds: [0, 1, 2, 3, 4, 5, 6, 7]
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(GRID.format(cache=Path(tmp) / "cache"))
        prepare(path, Path(tmp) / "warm")  # builds the tiny synthetic set once
        expand_s, prepare_s = [], []
        for i in range(3):
            t = time.perf_counter()
            runs, _ = expand(load_grid(path))
            expand_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            prepare(path, Path(tmp) / f"results{i}")
            prepare_s.append(time.perf_counter() - t)
        print(f"runs: {len(runs)}")
        print(f"load + expand:               median {statistics.median(expand_s):.3f} s over 3")
        print(
            f"expand + write run folders:  median {statistics.median(prepare_s):.3f} s over 3 "
            f"(run.json, config.py, status.json per run)"
        )


if __name__ == "__main__":
    main()
