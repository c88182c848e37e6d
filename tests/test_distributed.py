"""A finetune's result does not depend on how many processes share its batch: calibration and the
keep-ratio loss use the global batch, so 2 DDP processes (gloo, CPU) train the same selectors as one
process given the same global batch."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # three processes of torch start-up per case

WORKER = r"""
import json, os, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import prunebench.models.selectors as selectors
from prunebench.models import PrunedViT

# noise-free Gumbel decisions: the runs differ only in how the batch is split
selectors.logistic_noise = lambda score: torch.zeros_like(score, dtype=torch.float32)
rate, selector, out = sys.argv[1], sys.argv[2], sys.argv[3]
world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
torch.manual_seed(0)
model = PrunedViT(embed_dim=96, depth=4, num_heads=3, out_channels=32, prune_layers=[1, 2, 3],
                  keep_ratios=[0.7, 0.5, 0.3], rate=rate, selector=selector, selector_init="calibrated")
model.train()
wrapped = model
if world > 1:
    dist.init_process_group("gloo")
    wrapped = DistributedDataParallel(model, broadcast_buffers=False)  # as MMEngine wraps
optim = torch.optim.SGD(model.parameters(), lr=0.05)
losses = []
for step in range(3):
    batch = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(100 + step))
    feats = wrapped(batch.chunk(world)[rank])
    keep_loss = model.keep_ratio_loss()
    loss = sum(f.square().mean() for f in feats) + 4.0 * keep_loss
    optim.zero_grad()
    loss.backward()
    optim.step()
    losses.append(float(keep_loss))
params = {k: v.flatten().tolist() for k, v in model.selectors.state_dict().items()}
json.dump({"losses": losses, "selectors": params}, open(f"{out}/rank{rank}-of-{world}.json", "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rate, selector", [("dynamic", "gating"), ("fixed", "mlp")])
def test_two_processes_train_what_one_process_trains(tmp_path, rate, selector):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run = dict(capture_output=True, text=True, timeout=300)
    one = subprocess.run([sys.executable, str(script), rate, selector, str(tmp_path)], **run)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    two = subprocess.run(
        [*cmd, "--master_port", str(_free_port()), str(script), rate, selector, str(tmp_path)], **run
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single, rank0, rank1 = (
        json.loads(Path(tmp_path / name).read_text())
        for name in ("rank0-of-1.json", "rank0-of-2.json", "rank1-of-2.json")
    )
    assert rank0["selectors"] == rank1["selectors"], "the two ranks hold different selectors"
    assert rank0["losses"] == rank1["losses"]
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert single["losses"][0] > 0
    for key, values in single["selectors"].items():
        assert rank0["selectors"][key] == pytest.approx(values, rel=1e-4, abs=1e-6), key
