"""logger=mlflow against a real tracking server (started here on a free loopback port, SQLite backend, artifacts
served by it) and read back with MlflowClient; a local store for a multirun; bad tracker input in one line."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mnist_arch.commands import run
from mnist_arch.errors import ConfigError
from mnist_arch.train import job as training
from tests.conftest import fast_overrides, hydra_command

mlflow = pytest.importorskip("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--backend-store-uri", f"sqlite:///{folder / 'db.sqlite'}",
                                # the server keeps the artifacts (mlflow-artifacts:/): a remote server may not have the
                                # client write into its own files (mnist_arch/results/tracking.py)
                                "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    answer.read()
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    pytest.fail("the MLflow server did not start within 120 s")
                time.sleep(1)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_run_logs_params_every_epochs_metrics_tags_and_artifacts_to_a_server(make_cfg, mnist_root, tmp_path, server):
    from mlflow.tracking import MlflowClient

    overrides = fast_overrides(mnist_root) + ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={server}",
                                              "logger.mlflow.experiment_name=served", "seed=7"]
    record = training.train(make_cfg(overrides), tmp_path / "run", overrides)
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "run" and runs[0].info.status == "FINISHED"
    data = runs[0].data
    assert data.params["optimizer.lr"] == "0.1" and data.params["seed"] == "7" and data.params["model.name"] == "s4"
    history = client.get_metric_history(runs[0].info.run_id, "val/acc")
    assert [round(m.value, 6) for m in sorted(history, key=lambda m: m.step)] == record.val_acc  # every epoch
    assert data.tags["model"] == "s4" and data.tags["params"] == "17120" and data.tags["seed"] == "7"
    assert data.tags["setting"] == " ".join(o for o in overrides if not o.startswith("seed="))
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"summary.json", "layers.txt", "config.yaml", "plots", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "checkpoints")] == ["checkpoints/last.ckpt"]
    assert (tmp_path / "run" / "tensorboard").is_dir()  # both loggers


def test_a_server_that_points_artifacts_at_local_files_is_refused(make_cfg, mnist_root, tmp_path, server):
    from mlflow.tracking import MlflowClient

    elsewhere = tmp_path / "elsewhere"
    MlflowClient(server).create_experiment("hostile", artifact_location=elsewhere.as_uri())
    overrides = fast_overrides(mnist_root) + ["logger=mlflow", f"logger.mlflow.tracking_uri={server}",
                                              "logger.mlflow.experiment_name=hostile"]
    with pytest.raises(ConfigError, match=r"sends artifacts to 'file:.*', a place on this machine"):
        training.train(make_cfg(overrides), tmp_path / "run")
    assert not elsewhere.exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_a_three_job_multirun_is_three_runs_of_one_sweep(mnist_root, tmp_path, monkeypatch):
    """The local store (no server): one MLflow run per job, each with its own seed, all tagged with the sweep."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    argv = ["-m", *fast_overrides(mnist_root), "data.verify=false", "logger=mlflow", "seed=1,2,3",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "callbacks.plots=false"]
    assert hydra_command(run.main, argv, monkeypatch) == 0
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("mnist_arch").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2", "3"]
    assert {r.data.tags["sweep"] for r in runs} == {str(tmp_path / "sweep")}
    assert len({r.data.tags["setting"] for r in runs}) == 1  # the seeds of one setting: one group
    # the artifacts beside the database, not in ./mlruns of the folder the tests run in
    assert all(r.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri()) for r in runs)
    assert client.list_artifacts(runs[0].info.run_id, "checkpoints")


def test_an_unreachable_server_is_one_line_before_training_in_seconds(make_cfg, mnist_root, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        training.train(make_cfg(fast_overrides(mnist_root) + ["logger=mlflow", f"logger.mlflow.tracking_uri={closed}"]),
                       tmp_path / "run")
    assert time.monotonic() - started < 30
    assert str(err.value).startswith(f"logger.mlflow.tracking_uri={closed}: no MLflow server answers there")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_tracker_package_names_the_extra(make_cfg, mnist_root, tmp_path, monkeypatch):
    import pytorch_lightning.loggers.mlflow as lightning_mlflow

    class Missing:
        def __bool__(self):
            return False

        def __str__(self):
            return "No module named 'mlflow'"

    monkeypatch.setattr(lightning_mlflow, "_MLFLOW_AVAILABLE", Missing())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError, match=r"logger=mlflow needs its package: pip install 'mnist-arch\[mlflow\]'"):
        training.train(make_cfg(fast_overrides(mnist_root) + ["logger=mlflow"]), tmp_path / "run")


def test_the_environment_sets_the_store_and_the_command_line_wins(tmp_path, monkeypatch):
    from mnist_arch.results import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    from_env = tracking.prepare({}, tmp_path / "r", {})
    assert from_env["tracking_uri"] == "sqlite:///from-env.db"
    assert from_env["artifact_location"] == (Path("from-env.db").resolve().parent / "mlartifacts").as_uri()
    assert tracking.prepare({"tracking_uri": "sqlite:///given.db"}, tmp_path / "r", {})["tracking_uri"] == \
        "sqlite:///given.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    local = tracking.prepare({}, tmp_path / "r", {})
    assert local["tracking_uri"] == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert Path(local["artifact_location"][len("file://"):]) == tmp_path / "outputs" / "mlartifacts"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


def wandb_records(run_dir: Path) -> list:
    """The run's records as wandb's own reader prints them (`wandb leet inspect --json`)."""
    import json
    import shutil

    found = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(found) == 1, found
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    done = subprocess.run([wandb_cli, "leet", "inspect", "--json", str(found[0])], capture_output=True, text=True,
                          timeout=120)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_wandb_is_offline_and_one_run_per_job_grouped_by_sweep(mnist_root, tmp_path, monkeypatch):
    """logger=[tensorboard,wandb] in a 3-job multirun: three offline runs (nothing leaves the machine), each with
    the resolved config, every epoch's val acc, the run's files; one W&B group, the sweep; one setting."""
    pytest.importorskip("wandb")
    argv = ["-m", *fast_overrides(mnist_root), "data.verify=false", "logger=[tensorboard,wandb]", "seed=1,2,3",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "callbacks.plots=false"]
    assert hydra_command(run.main, argv, monkeypatch) == 0
    seeds, settings = [], set()
    for job in ("0", "1", "2"):
        records = wandb_records(tmp_path / "sweep" / job)
        run_record = next(r["run"] for r in records if "run" in r)
        assert run_record["run_group"] == "sweep" and run_record["display_name"] == job
        config = {k: v for r in records if "config" in r for k, v in r["config"].get("update", {}).items()}
        seeds.append(config["seed"])
        settings.add(config["group.setting"])
        assert config["optimizer.lr"] == 0.1 and config["model.name"] == "s4"
        accs = [r["history"]["item"]["val/acc"] for r in records if "val/acc" in r.get("history", {}).get("item", {})]
        assert len(accs) == 2  # every epoch
        files = {f["path"] for r in records if "files" in r for f in r["files"]["files"]}
        assert {"summary.json", "layers.txt", "checkpoints/last.ckpt"} <= files
    assert sorted(seeds) == [1, 2, 3] and len(settings) == 1

