"""Experiment trackers with the real components: the grid's ``tracking:`` section, the vis backends
a run's config gets, and the final results pushed to TensorBoard (read back with its own reader),
a real MLflow tracking server started here and MLflow's file store (read back with its client),
and W&B in offline mode (read back from its run folder; nothing sent)."""

import contextlib
import glob
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prunebench.cli import app
from prunebench.grid import GridError, load_grid
from prunebench.spec import RunSpec
from prunebench.tracking import add_vis_backends, final_metrics, push_run, run_params
from prunebench.tracking.backends import RUN_TAG, destinations

SEL = {"pruned_tokens": "preserve", "reactivation": False, "rate": "dynamic", "selector": "mlp"}


def _finished(make_run, sweep_dir, run_id, axes=SEL, box=31.5):
    run_dir = make_run(sweep_dir, run_id, axes, box=box, mask=box - 2, full=50.0, bb=20.0, keep=0.6)
    m = json.loads((run_dir / "metrics.json").read_text())
    m["paired"] = {"speedup": {"backbone": 1.4, "full": 1.2}}
    m["flops_g"] = {
        "backbone": 40.0,
        "full": 90.0,
        "vit_blocks": 25.0,
        "p10": {"backbone": 38.0, "full": 88.0},
        "p90": {"backbone": 42.0, "full": 92.0},
        "images": 8,
    }
    (run_dir / "metrics.json").write_text(json.dumps(m))
    return run_dir, m


# --- the grid section and the config ---------------------------------------------------------------


GRID = """
name: t
data: {type: synthetic}
axes: {rate: [fixed]}
tracking:
"""


def _grid(tmp_path, tracking: str):
    path = tmp_path / "g.yaml"
    path.write_text(GRID + tracking)
    return load_grid(path)


def test_tracking_section(tmp_path):
    grid = _grid(
        tmp_path,
        "  tensorboard: true\n  mlflow: {tracking_uri: 'http://127.0.0.1:1', experiment: e}\n"
        "  wandb: {project: p}\n",
    )
    assert grid.tracking == {
        "tensorboard": {},
        "mlflow": {"tracking_uri": "http://127.0.0.1:1", "experiment": "e"},
        "wandb": {"project": "p"},
    }
    assert _grid(tmp_path, "  tensorboard: false\n").tracking == {}
    assert load_grid(_write(tmp_path, GRID.replace("tracking:\n", ""))).tracking == {}
    for bad, match in (
        ("  neptune: true\n", "tracking.neptune: unknown key"),
        ("  wandb: {project: p, mode: cloud}\n", "tracking.wandb.mode: unknown mode 'cloud'"),
        (
            "  mlflow: {uri: x}\n",
            "tracking.mlflow.uri: unknown key. Fix: allowed keys: tracking_uri, experiment",
        ),
    ):
        with pytest.raises(GridError, match=match):
            _grid(tmp_path, bad)


def _write(tmp_path, text):
    path = tmp_path / "plain.yaml"
    path.write_text(text)
    return path


def test_missing_tracker_fails_with_install_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(
        GridError,
        match=r"tracking.wandb: the wandb package is not installed. Fix: pip install 'prunebench\[wandb\]'",
    ):
        _grid(tmp_path, "  wandb: {project: p}\n")
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--to", "wandb"])
    assert result.exit_code == 2 and "prunebench[wandb]" in result.output


def test_vis_backends_in_the_run_config(tmp_path):
    spec = RunSpec(
        "ft-s0-abc", "study", "finetune", "deit-tiny", 0, dict(SEL), backbone_args={"family": "plain"}
    )
    cfg = {"visualizer": {"type": "DetLocalVisualizer", "vis_backends": [{"type": "LocalVisBackend"}]}}
    add_vis_backends(
        cfg, {"tensorboard": {}, "mlflow": {}, "wandb": {"project": "p"}}, spec, tmp_path / "study" / "r"
    )
    local, tb, mlf, wb = cfg["visualizer"]["vis_backends"]
    assert local == {"type": "LocalVisBackend"}
    assert tb == {
        "type": "TensorboardVisBackend",
        "save_dir": str((tmp_path / "study/r/tensorboard").resolve()),
    }
    assert (
        mlf["tracking_uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
        and mlf["exp_name"] == "study"
    )
    assert mlf["artifact_location"] == (tmp_path / "mlartifacts").resolve().as_uri()
    assert mlf["run_name"] == "ft-s0-abc" and mlf["tags"][RUN_TAG] == "ft-s0-abc"
    assert mlf["params"] == run_params({**spec.to_json(), "family": "plain"})
    assert mlf["params"]["axis.rate"] == "dynamic" and mlf["params"]["method"] == "selector"
    init = wb["init_kwargs"]
    assert (init["project"], init["group"], init["name"], init["mode"]) == (
        "p",
        "study",
        "ft-s0-abc",
        "offline",
    )
    untouched = {"visualizer": {"vis_backends": []}}
    add_vis_backends(untouched, {}, spec, tmp_path)
    assert untouched == {"visualizer": {"vis_backends": []}}  # nothing tracked unless the grid says


def test_final_metrics():
    m = {
        "box_ap": 30.0,
        "mask_ap": float("nan"),
        "latency_ms": {"full": 50.0},
        "paired": None,
        "keep_ratio": {"mean": 0.5},
        "flops_g": {"full": 9.0, "p90": {"full": 10.0}, "images": 4},
    }
    assert final_metrics(m) == {
        "final/box_ap": 30.0,
        "final/latency_full_ms": 50.0,
        "final/keep_ratio": 0.5,
        "final/gflops_images": 4.0,
        "final/gflops_full": 9.0,
        "final/gflops_full_p90": 10.0,
    }


# --- TensorBoard -----------------------------------------------------------------------------------


def test_tensorboard_push_read_back_with_its_reader(tmp_path, make_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, m = _finished(make_run, tmp_path / "s", "ft-s0")
    dest = destinations({"tensorboard": {}}, "s", "ft-s0", run_dir)
    assert push_run(run_dir, m, dest) == {"tensorboard": "sent"}
    assert push_run(run_dir, m, dest) == {"tensorboard": "already"}
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    values = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert values["final/box_ap"] == [31.5] and values["final/speedup_full"] == [pytest.approx(1.2)]
    assert values["final/gflops_full_p10"] == [88.0] and values["final/keep_ratio"] == [pytest.approx(0.6)]


# --- MLflow ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (its own SQLite store), stopped after the module."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115  (the server writes it until the teardown)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + [
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "art"),
        ]
        + ["--workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


def _mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("where", ["server", "local store"])
def test_mlflow_push_read_back_with_its_client(where, tmp_path, make_run, request):
    """To the server started here, and to the default local store (SQLite beside the sweeps)."""
    server = where == "server"
    uri = (
        request.getfixturevalue("mlflow_server")
        if server
        else f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    )
    sweep = tmp_path / "results" / f"study-{where.replace(' ', '')}"
    _finished(make_run, sweep, "dense-s0", axes=None, box=33.0)
    _finished(make_run, sweep, "ft-s0")
    args = ["report", str(sweep), "--to", "mlflow"] + (["--tracking-uri", uri] if server else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 finished runs sent, 0 already there" in result.output
    again = CliRunner().invoke(app, args)
    assert "0 finished runs sent, 2 already there" in again.output
    for f in sweep.glob("*/tracking.json"):  # even without the record, MLflow itself is asked
        f.unlink()
    CliRunner().invoke(app, args)
    runs = {r.info.run_name: r for r in _mlflow_runs(uri, sweep.name)}
    assert sorted(runs) == ["dense-s0", "ft-s0"]  # one MLflow run each: no duplicates
    assert server or (tmp_path / "results" / "mlflow.db").is_file()
    ft = runs["ft-s0"].data
    assert ft.params["axis.rate"] == "dynamic" and ft.params["method"] == "selector"
    assert ft.tags[RUN_TAG] == "ft-s0" and ft.tags["stage"] == "finetune"
    assert ft.metrics["final/box_ap"] == 31.5 and ft.metrics["final/speedup_full"] == pytest.approx(1.2)
    assert ft.metrics["final/gflops_full"] == 90.0 and runs["dense-s0"].data.params["method"] == "dense"


def test_mlflow_vis_backend_and_final_results_in_one_run(mlflow_server, tmp_path, make_run):
    """A run tracked while it trains (MMEngine's MLflowVisBackend, as the run's config builds it)
    gets its final results added to the same MLflow run."""
    import mmengine.visualization  # noqa: F401  (registers the vis backends)
    from mmengine.config import Config
    from mmengine.registry import VISBACKENDS

    run_dir, m = _finished(make_run, tmp_path / "tracked", "ft-s0")
    spec = RunSpec("ft-s0", "tracked", "finetune", "deit-small", 0, dict(SEL), backbone_args={})
    cfg = {"visualizer": {"vis_backends": []}, "work_dir": str(run_dir / "work_dir")}
    add_vis_backends(cfg, {"mlflow": {"tracking_uri": mlflow_server}}, spec, run_dir)
    (run_dir / "work_dir").mkdir()
    backend = VISBACKENDS.build({**cfg["visualizer"]["vis_backends"][0], "save_dir": str(run_dir / "vis")})
    train = {
        "train_cfg": {"max_iters": 2},
        "optim_wrapper": {"optimizer": {"lr": 1e-4}},
        "randomness": {"seed": 0},
    }
    backend.add_config(Config({**train, "work_dir": cfg["work_dir"]}))
    for it in (1, 2):
        backend.add_scalars({"loss": 1.0 / it, "lr": 1e-4}, step=it)
    backend.close()
    from prunebench.tracking.push import track_final

    track_final(run_dir, cfg, m)
    (run,) = _mlflow_runs(mlflow_server, "tracked")
    assert run.info.run_name == "ft-s0" and run.data.metrics["final/box_ap"] == 31.5
    assert (
        run.data.params["optim_wrapper.optimizer.lr"] == "0.0001"
        and run.data.params["axis.rate"] == "dynamic"
    )
    from mlflow.tracking import MlflowClient

    history = MlflowClient(mlflow_server).get_metric_history(run.info.run_id, "loss")
    assert [(h.step, h.value) for h in history] == [(1, 1.0), (2, 0.5)]


# --- Weights & Biases (offline) --------------------------------------------------------------------


def _wandb_records(path: str) -> list[bytes]:
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB's
    log format (32 KiB blocks; per fragment crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    out, parts, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if left < 7 or kind == 0:  # block trailer or zero padding
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(parts)
            parts = b""
    return out


def read_wandb_run(run_dir: Path) -> dict:
    """What W&B's offline run files in ``run_dir/wandb/<run folders>`` hold: runs (id, name, group, project, config,
    tags), history rows and the summary, over all the run's files."""
    from wandb.proto import wandb_internal_pb2

    def items(entries):
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in entries}

    out = {"runs": [], "history": [], "summary": {}, "exits": 0}
    for path in sorted(glob.glob(str(run_dir / "wandb" / "*run-*" / "run-*.wandb"))):
        for data in _wandb_records(path):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                r = rec.run
                out["runs"].append(
                    dict(
                        id=r.run_id,
                        name=r.display_name,
                        group=r.run_group,
                        project=r.project,
                        config=items(r.config.update),
                        tags=list(r.tags),
                    )
                )
            elif kind == "history":
                out["history"].append(items(rec.history.item))
            elif kind == "summary":
                out["summary"].update(items(rec.summary.update))
            out["exits"] += kind == "exit"
    return out


def wait_wandb_run(run_dir: Path, exits: int = 1, timeout: float = 60) -> dict:
    """:func:`read_wandb_run` once W&B's service has written ``exits`` finished runs (it writes the
    files in the background)."""
    deadline = time.time() + timeout
    while (got := read_wandb_run(run_dir))["exits"] < exits and time.time() < deadline:
        time.sleep(0.2)
    return got


def test_wandb_offline_push_read_back_from_its_run_dir(tmp_path, make_run, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, m = _finished(make_run, tmp_path / "s", "ft-s0")
    dest = destinations({"wandb": {"project": "p"}}, "s", "ft-s0", run_dir)
    assert push_run(run_dir, m, dest) == {"wandb": "sent"}
    assert push_run(run_dir, m, dest) == {"wandb": "already"}
    got = wait_wandb_run(run_dir / "wandb")
    (run,) = got["runs"]
    assert (run["id"], run["name"], run["group"], run["project"]) == ("s-ft-s0", "ft-s0", "s", "p")
    assert run["config"]["axis.rate"] == "dynamic" and "finetune" in run["tags"]
    rows = [h for h in got["history"] if "final/box_ap" in h]
    assert rows and rows[0]["final/box_ap"] == 31.5 and got["summary"]["final/speedup_full"] == 1.2


# --- a tiny sweep with all three on -----------------------------------------------------------------

SWEEP = """\
name: tracked
base: mask-rcnn-vit-cpu
backbone: {{embed_dim: 32, depth: 2, num_heads: 2, out_channels: 16, prune_layers: [1], keep_ratios: [0.5]}}
data: {{type: synthetic, num_train: 8, num_val: 4, image_size: [64, 64], num_classes: 2, img_scale: [64, 64], batch_size: 2, cache_dir: {cache}}}
schedule: {{dense: {{iters: 4}}, finetune: {{iters: 2}}, warmup_iters: 1, checkpoint_interval: 2, log_interval: 1}}
bench: {{warmup: 0, repeats: 1, images: 1}}
axes: {{pruned_tokens: [preserve], reactivation: [true], rate: [dynamic], selector: [mlp]}}
tracking:
  tensorboard: true
  mlflow: {{tracking_uri: '{uri}', experiment: tiny-study}}
  wandb: {{project: tiny, mode: offline}}
"""


@pytest.mark.slow
def test_tiny_sweep_with_all_three_trackers(tmp_path, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prunebench.results import read_json
    from prunebench.sweep import run_sweep

    monkeypatch.setenv("WANDB_SILENT", "true")
    grid = tmp_path / "tracked.yaml"
    grid.write_text(SWEEP.format(cache=tmp_path / "cache", uri=mlflow_server))
    states = run_sweep(grid, tmp_path / "results")
    assert sorted(states.values()) == ["done", "done"], states
    sweep = tmp_path / "results" / "tracked"
    runs = {r.info.run_name: r for r in _mlflow_runs(mlflow_server, "tiny-study")}
    assert sorted(runs) == sorted(states)
    client = MlflowClient(mlflow_server)
    for run_id in states:
        m = read_json(sweep / run_id / "metrics.json")
        data = runs[run_id].data
        assert data.params["run_id"] == run_id and data.tags[RUN_TAG] == run_id
        assert data.metrics["final/box_ap"] == pytest.approx(m["box_ap"])
        assert data.metrics["final/gflops_full"] == pytest.approx(m["flops_g"]["full"])
        assert len(client.get_metric_history(runs[run_id].info.run_id, "loss")) >= 2  # a curve
        assert "lr" in data.metrics
        acc = EventAccumulator(str(sweep / run_id / "tensorboard"))
        acc.Reload()
        assert {"loss", "lr", "final/box_ap"} <= set(acc.Tags()["scalars"])
        got = wait_wandb_run(sweep / run_id / "wandb", exits=2)  # training, then the final results
        assert {r["name"] for r in got["runs"]} == {run_id} and {r["group"] for r in got["runs"]} == {
            "tracked"
        }
        assert any("loss" in h for h in got["history"]) and got["summary"]["final/box_ap"] == pytest.approx(
            m["box_ap"]
        )
        assert read_json(sweep / run_id / "tracking.json").keys() == {"tensorboard", "mlflow", "wandb"}
    print(  # what MLflow's client read back (shown with pytest -s)
        json.dumps(
            {
                "experiment": "tiny-study",
                "runs": {
                    name: {"params": r.data.params, "metrics": r.data.metrics, "tags": sorted(r.data.tags)}
                    for name, r in runs.items()
                },
            },
            indent=1,
            sort_keys=True,
        )
    )
    again = CliRunner().invoke(
        app,
        [
            "report",
            str(sweep),
            "--to",
            "mlflow",
            "--tracking-uri",
            mlflow_server,
            "--experiment",
            "tiny-study",
        ],
    )
    assert "0 finished runs sent, 2 already there" in again.output


def test_mlflow_experiment_created_once_by_jobs_starting_together(mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    from prunebench.tracking.push import mlflow_experiment, prepare_trackers

    cfg = {
        "visualizer": {
            "vis_backends": [{"type": "MLflowVisBackend", "tracking_uri": mlflow_server, "exp_name": "race"}]
        }
    }
    prepare_trackers(cfg)
    client = MlflowClient(mlflow_server)
    first = client.get_experiment_by_name("race").experiment_id
    real = MlflowClient.get_experiment_by_name
    calls = []

    def late(self, name):  # the first look misses an experiment another job has just created
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", late)
    assert mlflow_experiment(client, {"tracking_uri": mlflow_server, "experiment": "race"}) == first
    assert len(calls) == 2


def test_a_tracker_down_at_the_end_of_a_job_does_not_fail_it(tmp_path, make_run, monkeypatch):
    from prunebench.results import read_json
    from prunebench.tracking.push import track_final

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run_dir, m = _finished(make_run, tmp_path / "s", "ft-s0")
    spec = RunSpec("ft-s0", "s", "finetune", "deit-small", 0, dict(SEL), backbone_args={})
    cfg = {"visualizer": {"vis_backends": []}}
    add_vis_backends(
        cfg, {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}, "tensorboard": {}}, spec, run_dir
    )
    track_final(run_dir, cfg, m)  # MLflow unreachable: logged, and TensorBoard still gets the results
    assert list(read_json(run_dir / "tracking.json")) == ["tensorboard"]
