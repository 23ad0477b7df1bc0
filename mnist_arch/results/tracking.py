"""What a run sends to MLflow or Weights & Biases beyond Lightning's per-epoch metrics: the resolved config as params, tags (model,
params, MACs, verdict, commit, and what groups runs: the sweep or study, the setting, the seed), and the run's
files as artifacts (summary.json, the layer table, the plots, the final checkpoint). `logger=mlflow`
(conf/logger/mlflow.yaml) builds Lightning's MLFlowLogger; this module prepares its arguments and fills it in.

Where runs go: `logger.mlflow.tracking_uri` on the command line, else $MLFLOW_TRACKING_URI, else a local store,
sqlite:///outputs/mlflow.db (open it with `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`). A SQLite
store keeps a new experiment's artifacts in mlartifacts/ beside its database. A server that does not answer is
one line before training, within ~10 s: MLflow's own HTTP retries (minutes) are bounded here unless you set them.

W&B (`logger=wandb`, conf/logger/wandb.yaml) is offline by default: the run is written under
<run dir>/wandb/offline-run-*, nothing leaves the machine, and `wandb sync <that folder>` uploads it later;
`logger.wandb.offline=false` logs online (after `wandb login`), its start bounded by WANDB_INIT_TIMEOUT (30 s
unless set). The W&B group is the sweep or study, the setting and seed are in the run's config.

What reaches a tracker is what config.yaml records (mnist_arch/results/provenance.py, `recorded`): a
`${oc.env:...}` as written, never its value; a URL's password masked, in params and in every message. A
remote (http/https) tracking server may not send the run's artifacts to a `file:` location: that would have
this machine write where the server says, so it is refused in one line before training.
"""
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional

from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

from mnist_arch.errors import ConfigError, redact

LOCAL_STORE = Path("outputs") / "mlflow.db"
REACH_TIMEOUT_S = 10
# MLflow's client retries a failing request with backoff for minutes; a run must say so in seconds
BOUNDED = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def prepare(entry: Dict[str, Any], run_dir: Path, group: Dict[str, str]) -> Dict[str, Any]:
    """The MLFlowLogger's arguments: the tracking URI resolved and checked, the run named after its run dir,
    the grouping tags added."""
    entry = dict(entry)
    uri = entry.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store = LOCAL_STORE.resolve()
        store.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{store}"
    if uri.startswith("sqlite:///"):
        # MLflow puts a database store's artifacts in ./mlruns of whatever folder the command ran in (a checkout,
        # once); beside the database they stay with the runs that name them
        database = Path(uri[len("sqlite:///"):]).resolve()
        entry.setdefault("artifact_location", (database.parent / "mlartifacts").as_uri())
    entry["tracking_uri"] = uri
    for key, value in BOUNDED.items():
        os.environ.setdefault(key, value)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    entry.setdefault("run_name", run_dir.name)
    entry["tags"] = {**group, **(entry.get("tags") or {})}
    return entry


def prepare_wandb(entry: Dict[str, Any], run_dir: Path, group: Dict[str, str]) -> Dict[str, Any]:
    entry = dict(entry)
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    os.environ.setdefault("WANDB_SILENT", "true")  # its banner and sync hints; the run's own lines say where it is
    entry.setdefault("name", run_dir.name)
    entry.setdefault("group", Path(group["sweep"]).name)
    return entry


def check_reachable(uri: str) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S) as answer:
            answer.read(64)
    except urllib.error.HTTPError as e:  # it answered: a server is there (one without /health, or behind auth)
        e.close()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"logger.mlflow.tracking_uri={redact(uri)}: no MLflow server answers there ({reason}); "
                          "start it, or unset MLFLOW_TRACKING_URI for the local store under outputs/") from None


def check_artifact_store(logger) -> None:
    """A remote MLflow server names where the run's artifacts go; a `file:` (or bare path) location would have
    this machine write into its own filesystem wherever the server says: refused."""
    if not isinstance(logger, MLFlowLogger) or not str(logger._tracking_uri).startswith(("http://", "https://")):
        return
    where = logger.experiment.get_run(logger.run_id).info.artifact_uri or ""
    if where.startswith("file:") or "://" not in where and ":" not in where.split("/")[0]:
        raise ConfigError(f"logger.mlflow: the tracking server at {redact(logger._tracking_uri)} sends artifacts to "
                          f"{where[:120]!r}, a place on this machine; a remote server must keep them itself "
                          "(mlflow server --serve-artifacts)")


def log_config(logger, recorded: Dict[str, Any], group: Dict[str, str]) -> None:
    """The config as recorded, flattened to dotted keys, as the run's params (W&B: its config, with the group's
    keys too, since W&B has one group where MLflow has tags)."""
    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    params = dict(flat(recorded))
    if isinstance(logger, WandbLogger):
        params.update({f"group.{key}": value for key, value in group.items()})
    logger.log_hyperparams(params)


def finish(logger, record, run_dir: Path, final_checkpoint: Optional[Path]) -> None:
    """Tags from the record and the run's files as artifacts."""
    verdict = record.verdict
    tags = {"model": record.model, "params": record.params, "macs": record.macs_per_image,
            "status": record.status, "commit": record.git_commit,
            "verdict": None if verdict is None else ("pass" if all(verdict.checks().values()) else "fail")}
    files = [run_dir / name for name in ("summary.json", "layers.txt", "config.yaml") if (run_dir / name).is_file()]
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    checkpoint = [final_checkpoint] if final_checkpoint is not None and final_checkpoint.is_file() else []
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        run.summary.update({key: value for key, value in tags.items() if value is not None})
        run.tags = tuple(f"{key}:{value}" for key, value in tags.items() if value is not None and key != "commit")
        for path in [*files, *plots, *checkpoint]:
            run.save(str(path), base_path=str(run_dir), policy="now")
        # Ended here: Lightning leaves the W&B run open, and the next job of a multirun in this process would
        # log into it (the "multirun logs one run" complaint of the template this project's shape follows).
        run.finish()
        return
    client, run_id = logger.experiment, logger.run_id
    for key, value in tags.items():
        if value is not None:
            client.set_tag(run_id, key, str(value))
    for name in ("summary.json", "layers.txt", "config.yaml"):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if (run_dir / "plots").is_dir():
        client.log_artifacts(run_id, str(run_dir / "plots"), "plots")
    if final_checkpoint is not None and final_checkpoint.is_file():
        client.log_artifact(run_id, str(final_checkpoint), "checkpoints")
