"""What a run records each epoch, the lists `summary.json` is written from: val acc and loss, train loss and
acc, the lr at the epoch's start, the epoch's wall time, each digit's val accuracy and the digits no val image
was predicted as (a warning: a ReLU on the logits can stop a class's gradient), and the last epoch's confusion
matrix, which the plots draw.

A Lightning callback, so the module only trains. Lightning runs callbacks' hooks before the module's, so the
confusion matrix is read before the module resets it, the val numbers once the module has logged them (at
validation end), and the train numbers from the module's running sums. Kept in checkpoints, so a resumed run
keeps its past epochs (and last.ckpt, saved after every epoch-end hook, holds the whole epoch).
"""
import logging
import time
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from mnist_arch.results.record import SCALARS

log = logging.getLogger("mnist_arch")


class History(pl.Callback):
    def __init__(self):
        self.epochs: Dict[str, list] = {key: [] for key in SCALARS}
        self.epochs.update(val_acc_per_class=[], unpredicted=[])  # per epoch: 10 accuracies; the classes never predicted
        self.confusion: Optional[torch.Tensor] = None  # the last epoch's counts [true, predicted]
        self._started = 0.0

    def __getitem__(self, key: str) -> list:
        return self.epochs[key]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs["lr"].append(trainer.optimizers[0].param_groups[0]["lr"])
        self._started = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:  # the pre-fit sanity batches are not an epoch
            return
        self.confusion = pl_module.val_confusion.compute().cpu()  # summed over every rank's shard
        self.epochs["val_acc_per_class"].append((self.confusion.diag() / self.confusion.sum(dim=1).clamp(min=1)).tolist())
        self.epochs["unpredicted"].append([k for k in range(10) if self.confusion[:, k].sum() == 0])
        if self.epochs["unpredicted"][-1]:
            log.warning("epoch %d: no validation image was predicted as class %s (a ReLU on the logits can stop a "
                        "class's gradient)", pl_module.current_epoch + 1,
                        ", ".join(map(str, self.epochs["unpredicted"][-1])))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs["val_acc"].append(trainer.callback_metrics["val/acc"].item())
            self.epochs["val_loss"].append(trainer.callback_metrics["val/loss"].item())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loss, acc = pl_module.epoch_train_means()
        self.epochs["train_loss"].append(loss.item())
        self.epochs["train_acc"].append(acc.item())
        # Lightning validates before this hook, so this is the epoch's train + val wall time.
        self.epochs["epoch_time_s"].append(round(time.perf_counter() - self._started, 3))

    def state_dict(self) -> Dict[str, Any]:
        return self.epochs

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        # Only when resuming a fit: testing the best checkpoint must not roll the epochs back. A checkpoint
        # written before this callback existed kept them in checkpoint["history"].
        if trainer.state.fn != TrainerFn.FITTING:
            return
        state = checkpoint.get("callbacks", {}).get(self.state_key) or checkpoint.get("history", {})
        self.epochs = {key: list(state.get(key, [])) for key in self.epochs}


def find_history(trainer) -> Optional[History]:
    return next((cb for cb in trainer.callbacks if isinstance(cb, History)), None)
