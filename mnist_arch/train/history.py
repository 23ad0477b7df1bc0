"""What a run records each epoch, the lists `summary.json` is written from: val acc and loss, train loss and
acc, the lr at the epoch's start, the epoch's wall time, each digit's val accuracy and the digits no val image
was predicted as (a warning; for a net whose scores come out of a ReLU, that this can stop a class's gradient), and the last epoch's confusion
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

from mnist_arch.results.layer_table import scores_clipped_at_zero
from mnist_arch.results.record import SCALARS

log = logging.getLogger("mnist_arch")


class History(pl.Callback):
    def __init__(self):
        self.epochs: Dict[str, list] = {key: [] for key in SCALARS}
        self.epochs.update(val_acc_per_class=[], unpredicted=[])  # per epoch: 10 accuracies; the classes never predicted
        self.confusion: Optional[torch.Tensor] = None  # the last epoch's counts [true, predicted]
        self.relu_logits: Optional[bool] = None  # the net's scores come out of a ReLU (asked when a class goes missing)
        self._started = 0.0
        # this process's seconds in each part of the epochs (the record's phases_s): the training passes, the
        # validation passes, and what runs between them (checkpoints, the other callbacks, the scheduler)
        self.seconds = {"train": 0.0, "val": 0.0, "epoch_ends": 0.0}
        self.first_started: Optional[float] = None
        self._mark: Optional[float] = None  # since when the time goes to training
        self.ended: Optional[float] = None  # the last epoch's end: from there to the next start is epoch_ends

    def __getitem__(self, key: str) -> list:
        return self.epochs[key]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs["lr"].append(trainer.optimizers[0].param_groups[0]["lr"])
        self._started = self._mark = time.perf_counter()
        if self.first_started is None:
            self.first_started = self._started
        if self.ended is not None:
            self.seconds["epoch_ends"] += self._started - self.ended

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._mark is not None:
            self._val_started = time.perf_counter()
            self.seconds["train"] += self._val_started - self._mark
            self._mark = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:  # the pre-fit sanity batches are not an epoch
            return
        self.confusion = pl_module.val_confusion.compute().cpu()  # summed over every rank's shard
        self.epochs["val_acc_per_class"].append((self.confusion.diag() / self.confusion.sum(dim=1).clamp(min=1)).tolist())
        self.epochs["unpredicted"].append([k for k in range(10) if self.confusion[:, k].sum() == 0])
        if self.epochs["unpredicted"][-1]:
            if self.relu_logits is None:  # asked once, and only of a net that left a class out

                self.relu_logits = scores_clipped_at_zero(pl_module.net)
            log.warning("epoch %d: no validation image was predicted as class %s%s", pl_module.current_epoch + 1,
                        ", ".join(map(str, self.epochs["unpredicted"][-1])),
                        " (a ReLU on the logits can stop a class's gradient)" if self.relu_logits else "")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            # the checkpoints are saved after this hook (Lightning runs checkpoint callbacks last): epoch_ends
            self.ended = time.perf_counter()
            self.seconds["val"] += self.ended - self._val_started
            self.epochs["val_acc"].append(trainer.callback_metrics["val/acc"].item())
            if "val/acc_tta" in trainer.callback_metrics:  # tta=shifts
                self.epochs["val_acc_tta"].append(trainer.callback_metrics["val/acc_tta"].item())
            self.epochs["val_loss"].append(trainer.callback_metrics["val/loss"].item())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loss, acc = pl_module.epoch_train_means()
        self.epochs["train_loss"].append(loss.item())
        self.epochs["train_acc"].append(acc.item())
        # Lightning validates before this hook, so this is the epoch's train + val wall time.
        now = time.perf_counter()
        self.epochs["epoch_time_s"].append(round(now - self._started, 3))
        if self._mark is not None:  # no validation ended this epoch: all of it trained
            self.seconds["train"] += now - self._mark
            self._mark = None
        else:
            self.seconds["epoch_ends"] += now - self.ended
        self.ended = now

    def state_dict(self) -> Dict[str, Any]:
        return self.epochs

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        # Only when resuming a fit: testing the best checkpoint must not roll the epochs back. A checkpoint
        # written before this callback existed kept them in checkpoint["history"].
        if trainer.state.fn != TrainerFn.FITTING:
            return
        state = checkpoint.get("callbacks", {}).get(self.state_key) or checkpoint.get("history", {})
        self.epochs = {key: list(state.get(key, [])) for key in self.epochs}


class FinalPredictions(pl.Callback):
    """The class each validation image was predicted as at the last validation epoch (the final weights), and
    each test image at the test, with their labels: what `predictions.npz` keeps so that two runs can be compared
    image by image (mnist_arch/results/compare.py). A few KB of labels, gathered from what the steps return; the
    last validation epoch's are kept in checkpoints too, so a run resumed after its last epoch still has them."""

    def __init__(self):
        self.batches: Dict[str, list] = {"val": [], "test": []}

    def state_dict(self) -> Dict[str, Any]:
        if not self.batches["val"]:
            return {}
        labels, predicted = (torch.cat(parts).to(torch.uint8) for parts in zip(*self.batches["val"]))
        return {"val": (labels, predicted)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "val" in state:
            self.batches["val"] = [tuple(part.long() for part in state["val"])]

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:  # the sanity batches must not wipe what a resumed run restored
            self.batches["val"] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking and outputs is not None:
            self.batches["val"].append((batch[1].cpu(), outputs.cpu()))

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.batches["test"] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs is not None:
            self.batches["test"].append((batch[1].cpu(), outputs.cpu()))

    def splits(self, eval_index: Dict[str, Any]) -> Dict[str, tuple]:
        """split -> (source, index, label, predicted) as numpy arrays, for the splits that ran; `eval_index` is
        the DataModule's: each split's source set and its images' indices there, in loader order (a run that
        validated on fewer batches, `limit_val_batches`, keeps those images only)."""
        kept = {}
        for split, batches in self.batches.items():
            if not batches or split not in (eval_index or {}):
                continue
            source, index = eval_index[split]
            labels, predicted = (torch.cat(parts).numpy() for parts in zip(*batches))
            kept[split] = (source, index[: len(labels)].cpu().numpy(), labels, predicted)
        return kept


def find_history(trainer) -> Optional[History]:
    return next((cb for cb in trainer.callbacks if isinstance(cb, History)), None)
