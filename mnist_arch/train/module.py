"""One LightningModule for every architecture: the net is injected, the recipe comes from the config."""
from typing import Any, Dict, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mnist_arch.config.recipe import build_optimizer, build_scheduler
from mnist_arch.data.device_loader import tta_mean
from mnist_arch.errors import ConfigError, NonFiniteLoss




class Classifier(pl.LightningModule):
    """Trains `net`, which maps (N, 1, 28, 28) images to (N, 10) class scores, with cross-entropy.

    The scores are logits; log-probabilities work as well, since the loss's log_softmax leaves them
    unchanged (log_softmax(log_softmax(z)) == log_softmax(z)). `forward` returns what the net returns: the
    log_softmax runs once per step, inside the loss.

    `optimizer` and `scheduler` are the plain dicts of the `optimizer` and `scheduler` config groups
    (mnist_arch/config/recipe.py builds them); `net_spec` is the `model` group's (name and constructor
    arguments), saved in every checkpoint so the net can be rebuilt from the file alone
    (`mnist_arch.models.net_from_checkpoint`); `recorded`: the same hyperparameters as the record keeps them,
    for the checkpoint's copy. What is not training lives in callbacks: the per-epoch
    history `summary.json` is written from (mnist_arch/train/history.py), the random streams in
    checkpoints (RandomState in mnist_arch/train/callbacks.py), the plots.
    """

    def __init__(self, net: nn.Module, optimizer: Dict[str, Any], scheduler: Dict[str, Any],
                 net_spec: Optional[Dict[str, Any]] = None, channels_last: bool = False, compile: bool = False,
                 label_smoothing: float = 0.0, recorded: Optional[Dict[str, Any]] = None,
                 teachers: Sequence[nn.Module] = (), distill_alpha: float = 0.5, temperature: float = 4.0,
                 tta: str = "none"):
        super().__init__()
        # logger=False: the trackers get the config as recorded (mnist_arch/results/provenance.py) from the run,
        # not these resolved values, which may hold what an ${oc.env:...} read
        self.save_hyperparameters(ignore=["net", "recorded", "teachers"], logger=False)
        self.recorded = recorded or {}
        # The teachers are not submodules: their weights are not the student's (not counted by the rules, not
        # trained, not in its checkpoints), so they are kept in a plain list
        self.teachers = list(teachers)
        self.teacher_outputs = "per step"  # or "once": computed before the first epoch (on_fit_start)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        if compile:
            self.net.compile()  # in place: state-dict keys stay those of the plain net
        # Training loss and accuracy as running sums (loss x images, correct, images), not torchmetrics: a
        # metric update costs ~0.15 ms on a CPU, a few % of a small net's step (BENCHMARKS.md, the loop).
        self.register_buffer("train_sums", torch.zeros(3), persistent=False)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
        # [true, predicted]: read each epoch by the history callback (mnist_arch/train/history.py)
        self.val_confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
        self.val_acc_best = MaxMetric()
        # tta=shifts: also scored with test-time augmentation, beside (never instead of) the plain score
        self.val_acc_tta = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
        self.test_acc_tta = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
        self._epoch_means: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))

    def _logits_and_loss(self, batch, label_smoothing: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        return logits, F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    def _step(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy):
        y = batch[1]
        logits, loss = self._logits_and_loss(batch)
        loss_metric.update(loss.detach(), weight=len(y))
        acc_metric.update(logits.detach(), y)
        return loss, logits.detach()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        y = batch[1]
        # Label smoothing shapes the training loss only: val and test losses stay the plain cross-entropy.
        logits, loss = self._logits_and_loss(batch, self.hparams.label_smoothing)
        if self.teachers:  # the teachers' softened outputs: batched beside the images where computed once
            soft = batch[2] if len(batch) > 2 else self._teachers_soft(batch[0])
            loss = self._distilled(soft, logits, loss)
        with torch.no_grad():
            self.train_sums[0] += loss * len(y)
            self.train_sums[1] += (logits.argmax(dim=1) == y).sum()
            self.train_sums[2] += len(y)
        if not torch.isfinite(loss):  # one tiny sync per step; a NaN run must not burn its budget
            raise NonFiniteLoss(f"training loss is {loss.item()} at epoch {self.current_epoch + 1}, batch "
                                f"{batch_idx}: lower optimizer.lr or clip gradients (trainer.gradient_clip_val=1.0)")
        # self.log costs ~1 ms on CPU, as much as a small net's whole step; Lightning only writes step
        # values every log_every_n_steps anyway, so log (and refresh the bar's loss) just then.
        if batch_idx % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def _teachers_soft(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' outputs on the student's own (augmented) batch, softened at temperature T and averaged."""
        t = self.hparams.temperature
        return torch.stack([F.softmax(teacher(x).float() / t, dim=1) for teacher in self.teachers]).mean(dim=0)

    def _distilled(self, soft: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """alpha * T^2 * KL(teachers || student) at temperature T + (1 - alpha) * the labels' loss (Hinton et al.
        2015: T^2 keeps the soft term's gradients on the scale of the hard term's as T changes)."""
        t, alpha = self.hparams.temperature, self.hparams.distill_alpha
        kl = F.kl_div(F.log_softmax(logits.float() / t, dim=1), soft, reduction="batchmean")
        return alpha * t * t * kl + (1 - alpha) * loss

    def on_fit_start(self) -> None:
        for teacher in self.teachers:
            teacher.to(self.device).eval()
        # Without random augmentation every epoch shows the same images, and a teacher in eval mode gives each
        # the same outputs: one pass over the training set then replaces a teacher's pass every step (the
        # datamodule says where; under the precision's autocast, as the step's own would run).
        datamodule = self.trainer.datamodule
        if self.teachers and datamodule is not None and hasattr(datamodule, "teach"):
            with self.trainer.precision_plugin.forward_context():
                if datamodule.teach(self._teachers_soft):
                    self.teacher_outputs = "once"

    def setup(self, stage: str) -> None:
        # An epoch shorter than the logging interval (a short run, a large batch) would make Lightning warn about
        # its own setting at every run; log at least once an epoch instead (a full epoch of the references'
        # recipes has hundreds of batches: nothing changes there). Here, after the data and before the
        # optimizers, whose scheduler's length is where Lightning first counts the batches.
        datamodule = self.trainer.datamodule
        if stage == "fit" and datamodule is not None and self.trainer.log_every_n_steps > 1:
            batches, limit = len(datamodule.train_dataloader()), self.trainer.limit_train_batches
            batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
            if 0 < batches < self.trainer.log_every_n_steps:
                self.trainer.log_every_n_steps = batches

    def train_means(self, sums: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean training loss and accuracy over the epoch's batches so far (this process's, unless the
        summed `sums` of every process are given)."""
        loss_sum, correct, seen = self.train_sums if sums is None else sums
        return loss_sum / seen.clamp(min=1), correct / seen.clamp(min=1)

    def epoch_train_means(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The epoch's train loss and accuracy over every process, summed once (a collective: every rank calls
        it) and kept until the epoch ends, for the history callback, whose hook runs before this module's."""
        if self._epoch_means is None:
            self._epoch_means = self.train_means(self.trainer.strategy.reduce(self.train_sums.clone(), reduce_op="sum"))
        return self._epoch_means

    def on_train_epoch_end(self) -> None:
        loss, acc = self.epoch_train_means()
        self.log_dict({"train/loss": loss, "train/acc": acc})
        self.train_sums.zero_()
        self._epoch_means = None

    @torch.no_grad()
    def tta_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The mean class probabilities over TTA_SHIFTS (data/device_loader.py, tta_mean)."""
        return tta_mean(lambda view: F.softmax(self(view), dim=1), x)

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        _, logits = self._step(batch, self.val_loss, self.val_acc)
        if self.hparams.tta != "none":
            self.val_acc_tta.update(self.tta_probabilities(batch[0]), batch[1])
        predicted = logits.argmax(dim=1)
        self.val_confusion.update(predicted, batch[1])
        return predicted  # for callbacks (plots: confusion, mistakes)

    def on_validation_epoch_end(self) -> None:
        loss, acc = self.val_loss.compute(), self.val_acc.compute()
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_confusion.reset()
        if self.trainer.sanity_checking:  # the pre-fit sanity batches are not an epoch
            return
        self.val_acc_best.update(acc)
        self.log_dict({"val/loss": loss, "val/acc": acc, "val/acc_best": self.val_acc_best.compute()},
                      prog_bar=True)
        if self.hparams.tta != "none":
            self.log("val/acc_tta", self.val_acc_tta.compute())
            self.val_acc_tta.reset()

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        _, logits = self._step(batch, self.test_loss, self.test_acc)
        if self.hparams.tta != "none":
            self.test_acc_tta.update(self.tta_probabilities(batch[0]), batch[1])
        return logits.argmax(dim=1)  # for the predictions a run keeps (mnist_arch/train/history.py)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": self.test_loss.compute(), "test/acc": self.test_acc.compute()})
        if self.hparams.tta != "none":
            self.log("test/acc_tta", self.test_acc_tta.compute())
            self.test_acc_tta.reset()
        self.test_loss.reset()
        self.test_acc.reset()

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["net_spec"] = self.hparams.net_spec
        # a checkpoint travels (a tracker's artifact): its copy of the recipe is the one the record keeps
        given = checkpoint.get("hyper_parameters") or {}
        checkpoint["hyper_parameters"] = {**given, **{k: v for k, v in self.recorded.items() if k in given}}

    def on_train_start(self) -> None:
        """A resumed run keeps the schedule its checkpoint holds. One planned over another length (trainer.max_epochs
        changed since) would step past its end mid-run: refused here, before the first step."""
        if self.trainer.ckpt_path is None:  # a fresh run: the schedule is this run's own (total_steps may be given)
            return
        for config in self.trainer.lr_scheduler_configs:
            planned = getattr(config.scheduler, "total_steps", None)
            expected = self.hparams.scheduler.get("total_steps") or (
                self.trainer.estimated_stepping_batches if config.interval == "step" else self.trainer.max_epochs)
            if isinstance(planned, int) and planned != expected:
                raise ConfigError(f"ckpt_path: the checkpoint's {type(config.scheduler).__name__} was planned over "
                                  f"{planned} {config.interval}s and this run would take {expected}; resume with the "
                                  "trainer.max_epochs the run started with, or start a new run")

    def configure_optimizers(self):
        optimizer = build_optimizer(self.hparams.optimizer, self.net)
        scheduler = build_scheduler(self.hparams.scheduler, optimizer, self.trainer.estimated_stepping_batches,
                                    self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler} if scheduler else optimizer
