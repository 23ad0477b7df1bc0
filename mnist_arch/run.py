"""Train one architecture under a Hydra config, test it, and write `summary.json` into the run dir.

    python -m mnist_arch.run model=s6 optimizer.lr=0.05 trainer.max_epochs=20
    python -m mnist_arch.run -m model=s4,s6 seed=1,2,3      # a sweep, one run dir per job

Reads top to bottom: config -> seed -> data -> model -> callbacks -> trainer -> fit -> test -> summary.
"""
import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mnist_arch.config import Config, ConfigError, register_schema, validate

log = logging.getLogger("mnist_arch")
register_schema()


def train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    conf: Config = validate(cfg)  # every bad value fails here, before any data is fetched

    # Imported after validation so that a typo is reported in ~3 s, not after Lightning's ~6 s import.
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from mnist_arch.budget import BudgetError, RulesCheck, StopAtTarget, count_params, fc_layers
    from mnist_arch.data import DataError, MNISTDataModule
    from mnist_arch.module import Classifier, NonFiniteLoss, SaveOnInterrupt, interrupting_signal
    from mnist_arch.plots import RunPlots
    from mnist_arch.summary import describe

    resume = _resume_path(conf.ckpt_path, run_dir)
    threads = _threads(conf)
    if threads:
        torch.set_num_threads(threads)
    pl.seed_everything(conf.seed, workers=True)

    datamodule = MNISTDataModule(**asdict(conf.data), seed=conf.seed)
    net = build_net(conf)
    params = count_params(net)
    layers, shape_totals = describe(net, conf.budget.max_params, conf.budget.allow_fc)  # before any compile
    model = Classifier(net, optimizer=asdict(conf.optimizer), scheduler=asdict(conf.scheduler),
                       channels_last=conf.channels_last, compile=conf.compile)

    callbacks = []
    if conf.callbacks.rules:
        callbacks.append(RulesCheck(conf.budget.max_params, conf.budget.allow_fc))
    if conf.callbacks.stop_at_target:
        callbacks.append(StopAtTarget(conf.budget.target_acc))
    if conf.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=conf.callbacks.progress_refresh))
    checkpoint = None
    if conf.callbacks.checkpoint:
        checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/acc",
                                     mode="max", auto_insert_metric_name=False)
        # Lightning's save_last only copies a checkpoint when the best one is saved; this one is every
        # epoch's, saved at train-epoch end after the module's own epoch-end hook, so it holds the whole
        # epoch's history and resuming from it (ckpt_path=last) reproduces the uninterrupted run.
        last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                               enable_version_counter=False, save_on_train_epoch_end=True)
        callbacks += [checkpoint, last, SaveOnInterrupt(run_dir / "checkpoints" / "interrupted.ckpt")]
    if conf.callbacks.lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    plots = RunPlots(run_dir / "plots", conf.budget.target_acc, conf.data.val) if conf.callbacks.plots else None
    if plots:
        callbacks.append(plots)
    if conf.logger.name == "tensorboard":
        logger = TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False)
        _tensorboard_model(logger, net, layers, conf.logger.graph)
    else:
        logger = CSVLogger(save_dir=run_dir, name="csv", version="")
    trainer_kwargs = {k: v for k, v in asdict(conf.trainer).items() if v is not None}
    trainer = pl.Trainer(**trainer_kwargs, callbacks=callbacks, logger=logger, default_root_dir=run_dir)
    writer = trainer.is_global_zero  # under DDP every rank runs this function; one writes the files
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        (run_dir / "layers.txt").write_text(layers + "\n")
        log.info("%s\n%s", conf.model.name, layers)

    summary: Dict[str, Any] = {"model": conf.model.name, "params": params, "seed": conf.seed,
                               "val_split": conf.data.val, "status": "running", "budget": asdict(conf.budget),
                               "fc_layers": fc_layers(net), **shape_totals, "resumed_from": resume and str(resume),
                               "data_verified": conf.data.verify}
    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
        # With val=holdout the best-on-holdout checkpoint is a fair pick; with val=test the test set
        # must not pick weights, so the final weights are tested. test_weights=final tests the last
        # epoch's weights either way (for targets stated on the final epoch).
        use_best = (conf.test_weights != "final" and conf.data.val == "holdout" and checkpoint is not None
                    and bool(checkpoint.best_model_path))
        results = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint.best_model_path if use_best else None)
        summary.update(status="completed", test_acc=results[0]["test/acc"] if results else None,
                       test_ckpt="best" if use_best else "final")
    except (BudgetError, DataError, NonFiniteLoss) as e:
        summary.update(status=e.status, error=str(e))
        raise
    except BaseException as e:
        # Lightning answers Ctrl-C with a graceful stop and sys.exit(1) raised while handling the
        # KeyboardInterrupt, and SIGTERM with SIGTERMException after the current batch; the epochs
        # completed so far (and their checkpoints, plus checkpoints/interrupted.ckpt) are kept.
        signal_name = interrupting_signal(e)
        if signal_name is None:
            summary.update(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        summary.update(status="interrupted", signal=signal_name, test_acc=None, test_ckpt=None)
    finally:
        summary.update(_history(model.history))
        summary.update(_verdict(summary, conf.budget, conf.trainer.max_epochs),
                       wall_time_s=round(time.perf_counter() - started, 2),
                       device=_device(trainer.strategy.root_device, torch), git_commit=_git_commit(),
                       versions=_versions(), overrides=_overrides(), run_dir=str(run_dir))
        if plots:
            summary.update(plots_time_s=round(plots.seconds, 3), plots=sorted(plots.written))
        summary.update(rank=trainer.global_rank, world_size=trainer.world_size)
        if writer:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if isinstance(logger, TensorBoardLogger) and summary["epochs_run"]:
                _tensorboard_hparams(logger, conf, summary)
    return summary


@hydra.main(version_base="1.3", config_path="pkg://mnist_arch.conf", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """One run, or one job of a sweep. Returns the best val acc (the objective of `hparams_search`
    sweeps), None when the job failed. A failing job of a sweep records its summary.json (status,
    error) and lets the sweep go on; the leaderboard callback (mnist_arch/report.py) lists it and
    makes the sweep exit non-zero."""
    from hydra.types import RunMode

    from mnist_arch.budget import BudgetError
    from mnist_arch.data import DataError
    from mnist_arch.module import NonFiniteLoss

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = train(cfg, run_dir)
    except (ConfigError, DataError, BudgetError, NonFiniteLoss) as e:
        if not in_sweep:
            sys.exit(f"error: {e}")
        log.error("error: %s", e)
        if not (run_dir / "summary.json").is_file():  # refused before training: say so for the leaderboard
            _write_failure(cfg, run_dir, "bad_config", str(e))
        return None
    except Exception as e:  # a crash: train() recorded it as failed; keep the traceback in the job's log
        if not in_sweep:
            raise
        log.exception("job failed: %s: %s", type(e).__name__, e)
        return None
    if summary.get("rank"):
        return summary["best_val_acc"]  # a DDP helper rank: rank 0 reports
    if summary["status"] == "interrupted":
        again = " ".join([*_overrides(), f"hydra.run.dir={run_dir}", "ckpt_path=last"])
        print(f"interrupted ({summary['signal']}) after {summary['epochs_run']} epoch(s); summary in "
              f"{summary['run_dir']}\nresume: python -m mnist_arch.run {again}", file=sys.stderr)
        sys.exit(143 if summary["signal"] == "SIGTERM" else 130)  # the shell's codes; a sweep stops too
    print(_headline(summary))
    return summary["best_val_acc"]


def build_net(conf: Config):
    """A registered architecture by name, or (model=custom) any nn.Module from model.net._target_."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from mnist_arch.models import build_model

    if conf.model.name != "custom":
        return build_model(conf.model.name, **conf.model.net)
    try:
        return instantiate(conf.model.net)
    except InstantiationException as e:
        reason = str(e).strip().splitlines()[-1]
        raise ConfigError(f"model.net._target_={conf.model.net['_target_']} could not be built: {reason}") from e


# --- run plumbing ---------------------------------------------------------------------------------


def _resume_path(ckpt_path: Optional[str], run_dir: Path) -> Optional[Path]:
    """ckpt_path=last -> <run dir>/checkpoints/last.ckpt (the last completed epoch); or a file path."""
    if ckpt_path is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.is_file():
        hint = (" (resume in the interrupted run's dir: add hydra.run.dir=<that dir>)" if ckpt_path == "last"
                else "")
        raise ConfigError(f"ckpt_path={ckpt_path}: no checkpoint at {path}{hint}")
    return path


def _threads(conf: Config) -> Optional[int]:
    """Torch threads per process: `threads`, else the cores shared out between the jobs a parallel
    launcher (hydra.launcher.n_jobs) and the CPU processes of DDP run at once; None = torch's default."""
    if conf.threads:
        return conf.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
    if isinstance(n_jobs, int) and n_jobs != 1:
        share = cores if n_jobs < 0 else n_jobs
    if conf.trainer.accelerator == "cpu" and isinstance(conf.trainer.devices, int):
        share *= conf.trainer.devices
    return max(1, cores // share) if share > 1 else None


def _write_failure(cfg: DictConfig, run_dir: Path, status: str, error: str) -> None:
    model = OmegaConf.select(cfg, "model.name", default=None)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"model": model, "status": status, "error": error, "seed": OmegaConf.select(cfg, "seed"),
               "overrides": _overrides(), "run_dir": str(run_dir), "git_commit": _git_commit()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# --- TensorBoard extras --------------------------------------------------------------------------


def _tensorboard_model(logger, net, layers: str, graph: bool) -> None:
    """The layer table (TEXT tab) and the traced graph (GRAPHS tab); a net that cannot be traced
    (data-dependent control flow) only loses its graph, with a warning."""
    import torch

    from mnist_arch.summary import net_device

    logger.experiment.add_text("model/layers", "\n".join("    " + line for line in layers.splitlines()))
    if not graph:
        return
    try:
        with warnings.catch_warnings():  # add_graph uses torch.jit.trace, deprecated in torch 2.14 (no action for us)
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.trace.*")
            logger.experiment.add_graph(net, torch.zeros(1, 1, 28, 28, device=net_device(net)))
    except Exception as e:  # noqa: BLE001 - tracing is best effort; the run must not die for a picture
        log.warning("TensorBoard graph not written: the net could not be traced (%s: %s)", type(e).__name__, e)


def _tensorboard_hparams(logger, conf: Config, s: Dict[str, Any]) -> None:
    """The HPARAMS tab: one row per run with its recipe and results, so a sweep compares there.
    Metrics that do not exist (no test, target never reached) are NaN, shown blank/NaN there."""
    aug = {"rotation": conf.data.rotation, "translate": conf.data.translate, "scale": conf.data.scale,
           "erasing": conf.data.erasing}
    hparams = {"model": s["model"], "params": s["params"], "optimizer": conf.optimizer.name,
               "lr": conf.optimizer.lr, "momentum": conf.optimizer.momentum,
               "weight_decay": conf.optimizer.weight_decay, "scheduler": conf.scheduler.name,
               "batch_size": conf.data.batch_size, "max_epochs": conf.trainer.max_epochs,
               "augmentation": ", ".join(f"{k} {v:g}" for k, v in aug.items() if v) or "none",
               "val_split": conf.data.val, "seed": conf.seed, "status": s["status"]}
    nan = float("nan")
    metrics = {"hp/best_val_acc": s["best_val_acc"], "hp/final_val_acc": s["final_val_acc"],
               "hp/target_epoch": s["target_epoch"], "hp/test_acc": s.get("test_acc"),
               "hp/epochs_run": s["epochs_run"]}
    logger.log_hyperparams(hparams, metrics={k: nan if v is None else v for k, v in metrics.items()})
    logger.finalize("success")  # Lightning closed the writer after test; flush what was just written


# --- summary helpers ------------------------------------------------------------------------------


def _history(history: Dict[str, list]) -> Dict[str, Any]:
    """Per-epoch lists, and the best epoch (1-based) by val acc; ties go to the earliest epoch."""
    history = {key: [round(v, 6) for v in values] for key, values in history.items()}
    val_acc = history["val_acc"]
    best = max(range(len(val_acc)), key=lambda i: (val_acc[i], -i)) if val_acc else None
    return {
        "epochs_run": len(val_acc),
        "best_val_acc": val_acc[best] if best is not None else None,
        "best_epoch": best + 1 if best is not None else None,
        "final_val_acc": val_acc[-1] if val_acc else None,
        **history,
    }


def _verdict(s: Dict[str, Any], budget, max_epochs: int) -> Dict[str, Any]:
    """Were the rules met? target_epoch is the first epoch (1-based) with val acc >= target."""
    from mnist_arch.budget import reached

    hits = [i + 1 for i, acc in enumerate(s["val_acc"]) if reached(acc, budget.target_acc)]
    target_epoch = hits[0] if hits else None
    verdict = {"params_ok": s["params"] <= budget.max_params, "epochs_ok": max_epochs <= budget.max_epochs,
               "no_fc_ok": budget.allow_fc or not s["fc_layers"], "target_ok": target_epoch is not None}
    return {"target_acc": budget.target_acc, "target_reached": target_epoch is not None,
            "target_epoch": target_epoch, "verdict": verdict}


def _headline(s: Dict[str, Any]) -> str:
    """e.g. s4 · 17,120 params ✓ ≤20,000 · no FC ✓ · 99.42% at epoch 9 ✓ (target 99.40%, ≤20 epochs)"""
    mark = lambda ok: "✓" if ok else "✗"  # noqa: E731
    v, b = s["verdict"], s["budget"]
    fc = "FC allowed" if b["allow_fc"] else f"no FC {mark(v['no_fc_ok'])}"
    if s["target_epoch"] is not None:
        acc = f"{s['val_acc'][s['target_epoch'] - 1]:.2%} at epoch {s['target_epoch']} ✓"
    elif s["best_val_acc"] is not None:
        acc = f"best {s['best_val_acc']:.2%} at epoch {s['best_epoch']} ✗"
    else:
        acc = "no validation epoch ran ✗"
    test = f" · test acc {s['test_acc']:.2%} ({s['test_ckpt']} weights)" if s.get("test_acc") is not None else ""
    return (f"{s['model']} · {s['params']:,} params {mark(v['params_ok'])} ≤{b['max_params']:,} · {fc} · {acc} "
            f"(target {b['target_acc']:.2%}, ≤{b['max_epochs']} epochs, {s['epochs_run']} run, "
            f"val={s['val_split']}){test}")


def _device(device, torch) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _git_commit() -> Optional[str]:
    """The checkout's commit (+ '-dirty' with uncommitted changes); None when installed from a wheel."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["mnist-arch", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _overrides() -> list:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


if __name__ == "__main__":
    main()
