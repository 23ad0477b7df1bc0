"""The typed schema behind `conf/`: field types are checked by OmegaConf when Hydra composes (a typo in
a key or a non-number where a number belongs fails there), value ranges and names are checked in
`__post_init__` when `validate()` turns the composed config into these dataclasses, before any data is
fetched. The YAML files in `conf/` keep the values users read and override.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mnist_arch.models import list_models

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "plateau", "onecycle", "cosine")
LOGGERS = ("tensorboard", "csv")
VAL_SPLITS = ("test", "holdout")
PIPELINES = ("tensor", "torchvision")
TEST_WEIGHTS = ("auto", "best", "final")
MNIST_TRAIN_SIZE = 60_000


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what it accepts."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: str, allowed) -> None:
    _check(value in allowed, f"{key}={value!r} is not one of: {', '.join(allowed)}")


@dataclass
class ModelConf:
    name: str = "s4"  # a registered name, or "custom" for any nn.Module given by net._target_
    net: Dict[str, Any] = field(default_factory=dict)  # constructor keyword arguments (+ _target_ if custom)

    def __post_init__(self):
        _one_of("model.name", self.name, [*list_models(), "custom"])
        target = self.net.get("_target_")
        if self.name == "custom":
            _check(bool(target), "model=custom needs the net's class: model.net._target_=package.module.Class")
        else:
            _check(target is None, f"model.net._target_ is only for model=custom (model.name={self.name!r})")


@dataclass
class DataConf:
    root: Optional[str] = None
    pipeline: str = "tensor"
    val: str = "test"
    holdout_size: int = 5000
    batch_size: int = 64
    eval_batch_size: int = 1000
    drop_last: bool = False
    rotation: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    erasing: float = 0.0
    num_workers: int = 0
    download: bool = True
    verify: bool = True
    fetch_timeout_s: float = 30.0

    def __post_init__(self):
        _one_of("data.pipeline", self.pipeline, PIPELINES)
        _one_of("data.val", self.val, VAL_SPLITS)
        _check(
            0 < self.holdout_size < MNIST_TRAIN_SIZE,
            f"data.holdout_size={self.holdout_size} must be between 1 and {MNIST_TRAIN_SIZE - 1}",
        )
        _check(self.batch_size > 0, f"data.batch_size={self.batch_size} must be > 0")
        _check(self.eval_batch_size > 0, f"data.eval_batch_size={self.eval_batch_size} must be > 0")
        _check(0 <= self.rotation <= 180, f"data.rotation={self.rotation} must be in [0, 180] degrees")
        _check(0 <= self.translate <= 0.5, f"data.translate={self.translate} must be in [0, 0.5] (image fraction)")
        _check(0 <= self.scale < 1, f"data.scale={self.scale} must be in [0, 1)")
        _check(0 <= self.erasing <= 1, f"data.erasing={self.erasing} must be a probability in [0, 1]")
        _check(self.num_workers >= 0, f"data.num_workers={self.num_workers} must be >= 0")
        _check(self.fetch_timeout_s > 0, f"data.fetch_timeout_s={self.fetch_timeout_s} must be > 0")


@dataclass
class OptimizerConf:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / adamw only
    weight_decay: float = 0.0

    def __post_init__(self):
        _one_of("optimizer.name", self.name, OPTIMIZERS)
        _check(self.lr > 0, f"optimizer.lr={self.lr} must be > 0")
        _check(0 <= self.momentum < 1, f"optimizer.momentum={self.momentum} must be in [0, 1)")
        _check(self.weight_decay >= 0, f"optimizer.weight_decay={self.weight_decay} must be >= 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optimizer.betas={list(self.betas)} must be two numbers in [0, 1)",
        )


@dataclass
class SchedulerConf:
    name: str = "none"
    step_size: int = 5  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    patience: int = 2  # plateau: epochs without val-loss improvement
    factor: float = 0.5  # plateau: decay factor
    pct_start: float = 0.3  # onecycle: share of steps spent warming up to optimizer.lr
    div_factor: float = 25.0  # onecycle: start lr = optimizer.lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = start lr / final_div_factor
    eta_min: float = 0.0  # cosine: lr at the last epoch

    def __post_init__(self):
        _one_of("scheduler.name", self.name, SCHEDULERS)
        _check(self.step_size >= 1, f"scheduler.step_size={self.step_size} must be >= 1")
        _check(0 < self.gamma <= 1, f"scheduler.gamma={self.gamma} must be in (0, 1]")
        _check(self.patience >= 0, f"scheduler.patience={self.patience} must be >= 0")
        _check(0 < self.factor < 1, f"scheduler.factor={self.factor} must be in (0, 1)")
        _check(0 < self.pct_start < 1, f"scheduler.pct_start={self.pct_start} must be in (0, 1)")
        _check(self.div_factor > 0, f"scheduler.div_factor={self.div_factor} must be > 0")
        _check(self.final_div_factor > 0, f"scheduler.final_div_factor={self.final_div_factor} must be > 0")
        _check(self.eta_min >= 0, f"scheduler.eta_min={self.eta_min} must be >= 0")


@dataclass
class TrainerConf:
    """Passed to `pl.Trainer` as keyword arguments (None means Lightning's default)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    precision: Any = "32-true"
    max_epochs: int = 20
    deterministic: bool = False
    fast_dev_run: Any = False
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: Optional[int] = None
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    gradient_clip_val: Optional[float] = None
    strategy: str = "auto"  # "ddp" for several devices (trainer=ddp | ddp_cpu)
    sync_batchnorm: bool = False  # BN statistics over all DDP ranks

    def __post_init__(self):
        _check(self.max_epochs >= 1, f"trainer.max_epochs={self.max_epochs} must be >= 1")
        _check(self.log_every_n_steps >= 1, f"trainer.log_every_n_steps={self.log_every_n_steps} must be >= 1")


@dataclass
class BudgetConf:
    """The rules of the game; the run checks them and says plainly whether they were met."""

    max_params: int = 20_000
    max_epochs: int = 20
    target_acc: float = 0.994
    allow_fc: bool = False

    def __post_init__(self):
        _check(self.max_params > 0, f"budget.max_params={self.max_params} must be > 0")
        _check(self.max_epochs >= 1, f"budget.max_epochs={self.max_epochs} must be >= 1")
        _check(0 < self.target_acc <= 1, f"budget.target_acc={self.target_acc} must be a fraction in (0, 1]")


@dataclass
class CallbacksConf:
    rules: bool = True  # refuse, before any step, a net over budget.max_params or with an FC layer
    stop_at_target: bool = True  # stop after the first epoch with val acc >= budget.target_acc
    checkpoint: bool = True  # keep best (by val/acc) and last checkpoints in the run dir
    lr_monitor: bool = True  # log the learning rate every epoch
    plots: bool = True  # PNGs in <run dir>/plots, also in TensorBoard's IMAGES tab (mnist_arch/plots.py)
    progress_refresh: int = 20  # batches between progress-bar updates (each update costs CPU time)

    def __post_init__(self):
        _check(self.progress_refresh >= 1, f"callbacks.progress_refresh={self.progress_refresh} must be >= 1")


@dataclass
class LoggerConf:
    name: str = "tensorboard"
    graph: bool = True  # tensorboard only: trace the net once for the GRAPHS tab

    def __post_init__(self):
        _one_of("logger.name", self.name, LOGGERS)


@dataclass
class Config:
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    callbacks: CallbacksConf = field(default_factory=CallbacksConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    budget: BudgetConf = field(default_factory=BudgetConf)
    seed: int = 1234
    channels_last: bool = False  # NHWC activations and weights
    compile: bool = False  # torch.compile the net (first epoch pays the compile time)
    threads: Optional[int] = None  # torch CPU threads; None: shared out between parallel jobs / DDP ranks
    ckpt_path: Optional[str] = None  # resume: "last" (<run dir>/checkpoints/last.ckpt) or a checkpoint file
    test_weights: str = "auto"  # which weights the 10k test sees: auto | best | final (see conf/config.yaml)

    def __post_init__(self):
        _one_of("test_weights", self.test_weights, TEST_WEIGHTS)
        # Picking the best epoch by test accuracy and then reporting that test accuracy is tuning on it.
        _check(self.test_weights != "best" or self.data.val == "holdout",
               "test_weights=best needs data.val=holdout: with val=test the best epoch is chosen on the test set")
        _check(self.threads is None or self.threads >= 1, f"threads={self.threads} must be >= 1 (or null)")
        _check(self.trainer.max_epochs <= self.budget.max_epochs,
               f"trainer.max_epochs={self.trainer.max_epochs} is over budget.max_epochs={self.budget.max_epochs}; "
               f"to play with a larger budget, also set budget.max_epochs={self.trainer.max_epochs}")


def register_schema() -> None:
    """Make the schema the first default of `conf/config.yaml`, so every merge is type-checked."""
    ConfigStore.instance().store(name="schema", node=Config)


def validate(cfg: DictConfig) -> Config:
    """Composed config -> dataclasses; raises ConfigError (one line) on the first bad value."""
    return OmegaConf.to_object(cfg)
