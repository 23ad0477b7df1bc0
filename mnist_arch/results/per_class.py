"""What a run records about each digit: every validation epoch's per-class accuracy and the digits no image
was predicted as (a warning, since a ReLU on the logits can stop a class's gradient), and the last epoch's
confusion matrix, which the plots draw. A Lightning callback reading the module's confusion metric (summed
over every rank's shard) before the module's own epoch-end hook resets it: Lightning runs callbacks' hooks
first. Kept in checkpoints, so a resumed run keeps its past epochs."""
import logging
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

log = logging.getLogger("mnist_arch")


class PerClass(pl.Callback):
    def __init__(self):
        self.val_acc_per_class: List[List[float]] = []  # per epoch, digit 0 to 9
        self.unpredicted: List[List[int]] = []  # per epoch
        self.confusion: Optional[torch.Tensor] = None  # the last epoch's counts [true, predicted]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:  # the pre-fit sanity batches are not an epoch
            return
        self.confusion = pl_module.val_confusion.compute().cpu()
        self.val_acc_per_class.append((self.confusion.diag() / self.confusion.sum(dim=1).clamp(min=1)).tolist())
        self.unpredicted.append([k for k in range(10) if self.confusion[:, k].sum() == 0])
        if self.unpredicted[-1]:
            log.warning("epoch %d: no validation image was predicted as class %s (a ReLU on the logits can stop a "
                        "class's gradient)", pl_module.current_epoch + 1, ", ".join(map(str, self.unpredicted[-1])))

    def state_dict(self) -> Dict[str, Any]:
        return {"val_acc_per_class": self.val_acc_per_class, "unpredicted": self.unpredicted}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        # Only when resuming a fit: testing the best checkpoint must not roll the epochs back. A checkpoint
        # written before this callback existed kept them in the module's history.
        if trainer.state.fn != TrainerFn.FITTING:
            return
        state = checkpoint.get("callbacks", {}).get(self.state_key) or checkpoint.get("history", {})
        self.val_acc_per_class = list(state.get("val_acc_per_class", []))
        self.unpredicted = list(state.get("unpredicted", []))
