"""The run's Lightning callbacks: the rules (refuse before any step, stop at target), checkpoints,
interruption, and the table that turns the `callbacks` config group into the list the Trainer gets.

Each switch of the group (`callbacks.rules`, `callbacks.checkpoint`, ...) names one entry of SWITCHES;
a new callback is one entry there and one line in conf/callbacks/default.yaml.
"""
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar as LightningProgressBar
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnist_arch.config.schema import Budget
from mnist_arch.errors import BudgetError, Pruned
from mnist_arch.results.layer_table import layer_table, totals_of
from mnist_arch.rules import judge_net, reached
from mnist_arch.train.history import FinalPredictions, History
from mnist_arch.train.plots import RunPlots


class RulesCheck(pl.Callback):
    """At fit start, before any step: parameter budget, no-FC rule, output shape (mnist_arch.rules)."""

    def __init__(self, budget: Budget):
        self.budget = budget

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        macs = None
        if self.budget.max_macs is not None:  # counted only when limited: a pass of one image

            macs = totals_of(layer_table(pl_module.net))["macs_per_image"]
        broken = judge_net(pl_module.net, self.budget, macs=macs).failure()
        if broken:
            raise BudgetError(*broken)


class StopAtTarget(pl.Callback):
    """Stop after the first epoch whose val acc >= target (inclusive, which EarlyStopping's strict
    `stopping_threshold` is not), through Lightning's own `trainer.should_stop`."""

    def __init__(self, target_acc: float):
        self.target_acc = target_acc
        self.stopped_at: Optional[int] = None  # the record says so: the validation images chose this epoch

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        acc = trainer.callback_metrics.get("val/acc")  # logged by the module as the epoch's validation ends
        if not trainer.sanity_checking and acc is not None and reached(acc.item(), self.target_acc):
            trainer.should_stop = True
            self.stopped_at = trainer.current_epoch + 1


class Pruning(pl.Callback):
    """A search's trial (mnist_arch/commands/search.py): each epoch, tell the study the worker is alive and, with one
    objective, report the holdout val acc to its pruner (which may stop it only when `prune`). When the pruner
    says stop, the run stops as the next epoch starts, so the judged epoch is whole in the record and in
    last.ckpt."""

    def __init__(self, trial, report: bool, prune: bool = True, patient: Callable = lambda call: call()):
        """`patient(call)`: how a call to the study's storage is made (the search retries it while its database is
        away for a moment: mnist_arch/search/claims.py)."""
        self.trial, self.report, self.prune, self.verdict, self.patient = trial, report, prune, None, patient

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.patient(lambda: self.trial.set_user_attr("alive_at", time.time()))
        if self.report:
            epoch, acc = trainer.current_epoch, trainer.callback_metrics["val/acc"].item()
            self.patient(lambda: self.trial.report(acc, epoch))  # Optuna's steps start at 0
            if self.prune and self.patient(self.trial.should_prune):
                self.verdict = f"pruned after epoch {epoch + 1} (holdout val acc {acc:.4f})"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.verdict:
            raise Pruned(self.verdict)


def interrupting_signal(e: BaseException) -> Optional[str]:
    """'SIGINT' or 'SIGTERM' when `e` is how Lightning ends a run stopped by Ctrl-C or SIGTERM."""
    if isinstance(e, SIGTERMException):
        return "SIGTERM"  # raised by Lightning's loops after the batch during which SIGTERM arrived
    if isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
        return "SIGINT"  # Lightning answers KeyboardInterrupt with sys.exit(1) raised while handling it
    return None


class SaveOnInterrupt(pl.Callback):
    """Saves `path` where Ctrl-C or SIGTERM stopped the run, and only then. Mid-epoch, so it is kept for
    inspection; `ckpt_path=last` resumes from the last completed epoch, which reproduces the run.
    (Not Lightning's OnExceptionCheckpoint: its presence makes every fit() silently resume from the
    newest checkpoint in the folder.)"""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if interrupting_signal(exception):
            trainer.save_checkpoint(self.path)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, with accuracies to 4 places: 0.9938 must not read as 0.994 against a 0.994 target."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Dict[str, object]:
        metrics = super().get_metrics(trainer, pl_module)
        return {k: f"{v:.4f}" if "acc" in k and isinstance(v, float) else v for k, v in metrics.items()}


class EpochLines(LightningProgressBar):
    """Progress as one line per epoch, for logs written to a file or read under a scheduler, where a
    carriage-return bar leaves thousands of partial updates on one line:

        epoch 3/20 · train loss 0.0871 · val loss 0.0456 · val acc 0.9912 · 12.3 s
    """

    def __init__(self):
        super().__init__()
        self._enabled, self._started = True, 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        m = dict(trainer.callback_metrics)
        # Callbacks' epoch-end hooks run before the module's, which logs train/loss: read this epoch's
        # running mean from the module, or the line would show the previous epoch's. Only this process's
        # batches: a collective here, on rank 0 alone, would hang a DDP run.
        train = "train loss" if trainer.world_size == 1 else "train loss (rank 0)"
        if hasattr(pl_module, "train_means"):
            m["train/loss"] = pl_module.train_means()[0]
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        parts += [f"{label} {m[key].item():.4f}" for key, label in
                  [("train/loss", train), ("val/loss", "val loss"), ("val/acc", "val acc")] if key in m]
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        print(" · ".join(parts), flush=True)


def progress_bar(conf) -> LightningProgressBar:
    """callbacks.progress: auto (a bar on a terminal, one line per epoch otherwise) | bar | lines."""
    lines = conf.callbacks.progress == "lines" or (conf.callbacks.progress == "auto" and not sys.stdout.isatty())
    return EpochLines() if lines else ProgressBar(refresh_rate=conf.callbacks.progress_refresh)


def checkpoints(conf, run_dir: Path) -> List[pl.Callback]:
    folder = run_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor="val/acc", mode="max",
                           auto_insert_metric_name=False)
    # Lightning's save_last only copies a checkpoint when the best one is saved; this one is every
    # epoch's, saved at train-epoch end after the module's own epoch-end hook, so it holds the whole
    # epoch's history and resuming from it (ckpt_path=last) reproduces the uninterrupted run.
    last = ModelCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False, save_on_train_epoch_end=True)
    return [best, last, SaveOnInterrupt(folder / "interrupted.ckpt")]


# callbacks.<switch> -> what it adds, from the validated config and the run dir.
SWITCHES: Dict[str, Callable[..., List[pl.Callback]]] = {
    "rules": lambda conf, run_dir: [RulesCheck(conf.budget)],
    "stop_at_target": lambda conf, run_dir: [StopAtTarget(conf.budget.target_acc)],
    "checkpoint": checkpoints,
    "lr_monitor": lambda conf, run_dir: [LearningRateMonitor(logging_interval="epoch")],
    "plots": lambda conf, run_dir: [RunPlots(run_dir / "plots", conf.budget.target_acc, conf.data.val)],
    # Lightning's EMA: validation, checkpoints and the final weights are the average (BN statistics too).
    "ema": lambda conf, run_dir: [EMAWeightAveraging(decay=conf.callbacks.ema)],
}


class RandomState(pl.Callback):
    """The random streams in every checkpoint (dropout masks; the data order has its own per-epoch seed), so a
    run resumed from an epoch-end checkpoint goes on exactly as the uninterrupted one would. Tensors and plain
    tuples only, so the checkpoint still loads with torch.load(weights_only=True)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng"] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if not rng or trainer.state.fn != TrainerFn.FITTING:  # testing the best checkpoint changes no stream
            return
        random.setstate(rng["python"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])


def build_callbacks(conf, run_dir: Path) -> List[pl.Callback]:
    """What every run keeps (the random streams in its checkpoints, the per-epoch history, the final predictions),
    every callback
    whose switch is on, and the progress display when the trainer shows one."""
    callbacks = [RandomState(), History(), FinalPredictions()]
    callbacks += [cb for switch, make in SWITCHES.items() if getattr(conf.callbacks, switch)
                  for cb in make(conf, run_dir)]
    if conf.trainer.enable_progress_bar:
        callbacks.append(progress_bar(conf))
    return callbacks


def find(callbacks: List[pl.Callback], kind: type, **attrs) -> Optional[pl.Callback]:
    """The first callback of `kind` whose attributes match, e.g. find(cbs, ModelCheckpoint, monitor="val/acc")."""
    return next((cb for cb in callbacks if isinstance(cb, kind)
                 and all(getattr(cb, k) == v for k, v in attrs.items())), None)
