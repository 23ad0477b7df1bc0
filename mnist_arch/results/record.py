"""The run record: what `summary.json` holds, written by one writer and read back by one reader.

Every job writes one, whatever happened to it: completed, interrupted, refused before training
(bad_config, over_budget, ...), or crashed. The report, the run's headline and TensorBoard's HPARAMS tab
read these fields, not keys by string. Fields that follow from others (best epoch, target epoch, the
verdict) are properties: written into the JSON for people and other tools, recomputed when read, so they
can never disagree with the per-epoch lists. `version` tells a reader which layout a file has: files
without one are version 1 (mnist_arch before the record existed), and read the same way.
"""
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator
from typing_extensions import Annotated

from mnist_arch.config.schema import Budget
from mnist_arch.errors import RunError
from mnist_arch.files import MAX_RECORD_BYTES, check_file, write_atomic
from mnist_arch.results import provenance
from mnist_arch.rules import Verdict, best_epoch, judge

RECORD_VERSION = 5  # 4: stopped_at_target; 5: phases_s, logits_after_relu
FILE_NAME = "summary.json"
# The per-epoch lists of one number each, recorded by the run's History callback (train/history.py, which
# imports this module: the record must not import Lightning, or Lightning would set up its logging before Hydra).
SCALARS = ("val_acc", "val_loss", "train_loss", "train_acc", "lr", "epoch_time_s", "val_acc_tta")


def _an_accuracy(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError("an accuracy outside [0, 1]")
    return value


def _not_infinite(value: float) -> float:
    if math.isinf(value):  # NaN stays: a diverging run's val loss is one, and the record must still read
        raise ValueError("an infinite number")
    return value


# A file from elsewhere is data: strict types (no "3" for 3, no true for 1.0), no infinity, accuracies in
# [0, 1], a budget that is one; keys this version does not know (derived ones, older ones) are left out.
Number = Annotated[float, AfterValidator(_not_infinite)]
Accuracy = Annotated[float, AfterValidator(_an_accuracy)]


class _Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=True)


class Run(_Part):
    """What ran, how it ended, and from which command."""

    status: str = "running"  # completed | interrupted | over_budget | fc_not_allowed | bad_output | bad_config
    #                          | data_error | non_finite_loss | failed | running (still going, or killed hard)
    error: Optional[str] = None  # why, when it did not complete
    signal: Optional[str] = None  # SIGINT | SIGTERM, when interrupted
    seed: Optional[int] = None
    val_split: Optional[str] = None  # test | holdout | fold
    folds: Optional[int] = None  # val=fold: K, and which fold validated
    fold: Optional[int] = None
    overrides: List[str] = []
    stopped_at_target: Optional[int] = None  # the epoch (1-based) callbacks.stop_at_target ended the run at
    distilled_from: Optional[Dict[str, Any]] = None  # distill.teacher: the teachers (run dir, model, params, train s)
    run_dir: Optional[str] = None
    resumed_from: Optional[str] = None
    data_verified: Optional[bool] = None
    overfit_batches: Optional[Number] = None  # debug=overfit: the batches trained on every epoch
    wall_time_s: Optional[Number] = None
    device: Optional[str] = None
    precision: Optional[str] = None  # what Lightning ran (trainer.precision=auto resolved): 32-true | bf16-mixed ...
    rank: int = 0
    world_size: int = 1
    version: int = RECORD_VERSION


class Net(_Part):
    """The architecture as the rules see it."""

    model: Optional[str] = None
    net_spec: Optional[Dict[str, Any]] = None  # the model group: name + constructor arguments
    params: Optional[int] = None
    fc_layers: List[str] = []
    output_shape: Optional[List[int]] = None  # for a probe batch of 2 images
    macs_per_image: Optional[int] = None
    receptive_field: Optional[int] = None
    receptive_field_layer: Optional[str] = None
    receptive_field_measured: Optional[int] = None
    logits_after_relu: Optional[bool] = None  # the scores come out of a ReLU: a class may never get a gradient


class Budgeted(_Part):
    """The budget the run was judged under (mnist_arch.config.schema.Budget as a dict)."""

    budget: Optional[Dict[str, Any]] = None

    @field_validator("budget")
    @classmethod
    def _a_budget(cls, budget: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        if budget is not None:
            try:
                Budget(**budget)
            except (TypeError, RunError) as e:
                raise ValueError(f"not a budget ({e})") from None
        return budget


class Result(_Part):
    """What the run measured, epoch by epoch (the lists of mnist_arch/train/history.py), and its test."""

    val_acc: List[Accuracy] = []
    val_loss: List[Number] = []
    train_loss: List[Number] = []
    train_acc: List[Accuracy] = []
    lr: List[Number] = []  # at epoch start
    epoch_time_s: List[Number] = []  # train + val
    val_acc_per_class: List[Accuracy] = []  # the last epoch's, digit 0 to 9
    unpredicted: List[List[int]] = []  # per epoch: classes no val image was predicted as
    val_acc_tta: List[Accuracy] = []  # tta=shifts: each epoch's val acc with test-time augmentation (beside val_acc)
    test_acc: Optional[Accuracy] = None
    test_acc_tta: Optional[Accuracy] = None  # tta=shifts: the test's, with test-time augmentation
    test_ckpt: Optional[str] = None  # best | final: which weights the test saw
    plots: List[str] = []
    plots_time_s: Optional[Number] = None
    # Where this process's time went, in seconds, in order (mnist_arch/train/job.py, `phases`): start (the
    # interpreter, imports and Hydra's compose, until the run began; Linux only), setup, fit_start, train,
    # val, epoch_ends, fit_end, test, record. All but train and val is the run's fixed cost (BENCHMARKS.md).
    phases_s: Dict[str, Number] = {}
    predictions: Optional[str] = None  # the run dir's file of final-epoch predictions (mnist_arch/results/compare.py)


class Provenance(_Part):
    """Where the result came from (mnist_arch/results/provenance.py)."""

    git_commit: Optional[str] = None  # + "-dirty" when the checkout had uncommitted changes
    git_diff: Optional[str] = None  # then: the file in the run dir holding `git diff HEAD`
    versions: Dict[str, Optional[str]] = {}


# Parts listed last come first in the file (pydantic collects fields from the last base up).
class RunRecord(Provenance, Result, Budgeted, Net, Run):
    """summary.json: one flat object, its keys grouped by part, the parts' fields together."""

    @classmethod
    def refused(cls, status: str, error: str, run_dir: Path, **known: Any) -> "RunRecord":
        """The record of a job refused before it trained (a bad config in a sweep, a search's infeasible net):
        why, what is known of it (`known`: model, seed, overrides, params, ...), and the code's commit."""
        return cls(status=status, error=error, run_dir=str(run_dir), git_commit=provenance.git_state()[0], **known)

    # --- what follows from the fields above --------------------------------------------------------

    @property
    def epochs_run(self) -> int:
        return len(self.val_acc)

    @property
    def best_epoch(self) -> Optional[int]:
        """1-based; ties go to the earliest epoch."""
        return best_epoch(self.val_acc)

    @property
    def best_val_acc(self) -> Optional[float]:
        return self.val_acc[self.best_epoch - 1] if self.val_acc else None

    @property
    def final_val_acc(self) -> Optional[float]:
        return self.val_acc[-1] if self.val_acc else None

    @property
    def verdict(self) -> Optional[Verdict]:
        """The rules' judgement of this run (None when it was refused before its net was built)."""
        if self.budget is None or self.params is None:
            return None
        return judge(Budget(**self.budget), self.params, self.fc_layers, self.output_shape, self.val_acc,
                     macs=self.macs_per_image)

    @property
    def target_acc(self) -> Optional[float]:
        return self.budget["target_acc"] if self.budget else None

    @property
    def target_epoch(self) -> Optional[int]:
        return self.verdict.target_epoch if self.verdict else None

    @property
    def target_reached(self) -> bool:
        return self.target_epoch is not None

    @property
    def never_predicted(self) -> Dict[int, int]:
        """class -> the epoch (1-based) since which no validation image was predicted as it, for the
        classes still unpredicted at the last epoch."""
        since: Dict[int, int] = {}
        for klass in (self.unpredicted[-1] if self.unpredicted else []):
            epoch = len(self.unpredicted)
            while epoch > 1 and klass in self.unpredicted[epoch - 2]:
                epoch -= 1
            since[klass] = epoch
        return since

    def add_history(self, history: Dict[str, list]) -> None:
        """The run's per-epoch history: scalar lists rounded to 6 places, the last epoch's per-class acc."""
        for key in SCALARS:
            setattr(self, key, [round(v, 6) for v in history.get(key, [])])
        per_class = history.get("val_acc_per_class") or [[]]
        self.val_acc_per_class = [round(a, 6) for a in per_class[-1]]
        self.unpredicted = [list(epoch) for epoch in history.get("unpredicted", [])]

    def headline(self) -> str:
        """e.g. s4 · 17,120 params ✓ ≤20,000 · no FC ✓ · 99.42% at epoch 9 ✓ (target 99.40%, ≤20 epochs,
        9 run, val=test) · test acc 99.42% (final weights)"""
        verdict = self.verdict
        if verdict is None:
            return f"{self.model} · {self.status}: {self.error}"
        test = f" · test acc {self.test_acc:.2%} ({self.test_ckpt} weights)" if self.test_acc is not None else ""
        if self.test_acc_tta is not None:  # beside the plain score, never instead of it
            test += f" · with TTA {self.test_acc_tta:.2%}"
        dead = ""
        if self.never_predicted:  # e.g. "class 9 never predicted since epoch 1", grouped by that epoch
            by_epoch: Dict[int, List[int]] = {}
            for klass, epoch in sorted(self.never_predicted.items()):
                by_epoch.setdefault(epoch, []).append(klass)
            groups = [f"{'class' if len(ks) == 1 else 'classes'} {', '.join(map(str, ks))} never predicted since "
                      f"epoch {e}" for e, ks in sorted(by_epoch.items())]
            dead = f" · ⚠ {'; '.join(groups)}" + (": a ReLU on the logits can stop a class's gradient"
                                                  if self.logits_after_relu else "")
        overfit = (f" · overfit {self.overfit_batches:g} batches: train acc {self.train_acc[-1]:.2%}"
                   if self.overfit_batches and self.train_acc else "")
        return f"{self.model} · {verdict.headline()}, val={self.val_split}){test}{overfit}{dead}"

    # --- the one writer and the one reader ----------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        verdict = self.verdict  # judged once here; target_epoch and target_reached follow from it
        target_epoch = verdict.target_epoch if verdict else None
        derived = {"epochs_run": self.epochs_run, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                   "final_val_acc": self.final_val_acc, "target_acc": self.target_acc,
                   "target_reached": target_epoch is not None, "target_epoch": target_epoch,
                   "verdict": verdict.checks() if verdict else None}
        return {**self.model_dump(), **derived}

    def write(self, run_dir: Union[str, Path]) -> Path:
        """Into <run_dir>/summary.json, atomically: a reader never sees half a file."""
        path = Path(run_dir) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunRecord":
        """Any version's fields (a file without `version` is version 1). A file from elsewhere is data: a field
        of the wrong type, an accuracy outside [0, 1] or a budget that is not one raises ValueError naming the
        field, rather than reaching a table as a wrong number."""
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object was expected, not {type(data).__name__}")
        try:
            return cls.model_validate({"version": 1, **data})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"]))
            why = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"field {where!r} holds {json.dumps(first['input'])[:40]}: {why}") from None

    @classmethod
    def read(cls, path: Union[str, Path]) -> "RunRecord":
        """A summary.json (or the run dir holding one). An unreadable file reads as status 'unreadable', its
        error one line that says why."""
        path = Path(path)
        path = path / FILE_NAME if path.is_dir() else path
        try:
            check_file(path, FILE_NAME, MAX_RECORD_BYTES)
            record = cls.from_dict(json.loads(path.read_bytes()))
        except RunError as e:  # not a regular file, empty, too large
            record = cls(status="unreadable", error=str(e))
        except (OSError, ValueError, TypeError, RecursionError) as e:  # not JSON, not a record
            record = cls(status="unreadable", error=f"{path}: not a readable {FILE_NAME} ({str(e).splitlines()[0]})")
        # where the file is now, not where it was written: a run dir moved or copied (off a cluster, out of a
        # worktree) still finds its own predictions and checkpoints
        record.run_dir = str(path.parent)
        return record
