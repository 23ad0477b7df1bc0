"""The typed schema behind `conf/`. The YAML files hold every default (one source); this file holds the
types and the valid ranges. Field types are checked by OmegaConf when Hydra composes (a typo in a key or
a non-number where a number belongs fails there); `validate()` refuses keys added with `+` that nothing
would read, turns the composed config into these dataclasses, and checks value ranges and names in
`__post_init__`, before any data is fetched. `MISSING` marks a value that comes from the YAML; an
Optional field left None means "not given" (the class's own default applies).
"""
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from mnist_arch.config.recipe import OPTIMIZER_BASE, SCHEDULER_BASE, class_arguments, piecewise_problem
from mnist_arch.errors import ConfigError, did_you_mean
from mnist_arch.locate import check_arguments, locate
from mnist_arch.models import CUSTOM, list_architectures, list_models, unknown_model

VAL_SPLITS = ("test", "holdout", "fold")
PIPELINES = ("tensor", "torchvision")
TEST_WEIGHTS = ("auto", "best", "final")
INTERVALS = ("epoch", "step")
PROGRESS = ("auto", "bar", "lines")
TTA = ("none", "shifts")
MNIST_TRAIN_SIZE = 60_000


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def holdout_problem(holdout_size: int, train_size: int) -> Optional[str]:
    """The holdout split's one check: asked here with MNIST's 60k, and by the DataModule with the images it
    found (your own files, with data.verify=false, may hold fewer)."""
    if 0 < holdout_size < train_size:
        return None
    return f"data.holdout_size={holdout_size} must be between 1 and {train_size - 1}"


def fold_problem(folds: int, fold: int, train_size: int) -> Optional[str]:
    """What is wrong with data.folds / data.fold (None: nothing); checked against MNIST's 60k here and against
    the files' own count when they are read."""
    if not 2 <= folds <= train_size:
        return f"data.folds={folds} must be at least 2 (K-fold cross-validation needs two folds)"
    if not 0 <= fold < folds:
        return f"data.fold={fold} is out of range: with data.folds={folds} it is one of 0..{folds - 1}"
    return None


def check_mapping(key: str, value) -> None:
    # OmegaConf types a scalar but not a mapping behind an interpolation: model.net=${oc.env:HOME} arrives a str
    check(isinstance(value, dict), f"{key} must be a mapping (name: value, ...), not {value!r}")


def one_of(key: str, value: str, allowed) -> None:
    check(value in allowed, f"{key}={value!r} is not one of: {', '.join(allowed)}")


@dataclass
class ModelConf:
    name: str = MISSING  # a registered name, "custom" (any nn.Module given by net._target_), or a preset's label
    arch: Optional[str] = None  # a preset's registered constructor (conf/model/public_3762.yaml: convnet)
    net: Dict[str, Any] = field(default_factory=dict)  # constructor keyword arguments (+ _target_ if custom)

    def __post_init__(self):
        if self.arch is not None:
            check(self.arch in list_architectures(), f"model.arch: {self.arch!r} is not a registered architecture; "
                   f"available: {', '.join(list_architectures())}")
        else:
            check(self.name in [*list_models(), CUSTOM], f"model.name: {unknown_model(self.name, CUSTOM)}")
        check_mapping("model.net", self.net)
        target = self.net.get("_target_")
        if self.name == CUSTOM:
            check(bool(target), "model=custom needs the net's class: model.net._target_=package.module.Class")
        else:
            check(target is None, f"model.net._target_ is only for model=custom (model.name={self.name!r})")


@dataclass
class DataConf:
    """The arguments of MNISTDataModule (mnist_arch/data/datamodule.py), but its `seed`."""

    root: Optional[str] = MISSING
    pipeline: str = MISSING
    val: str = MISSING
    holdout_size: int = MISSING
    folds: int = MISSING
    fold: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    drop_last: bool = MISSING
    rotation: float = MISSING
    rotation_p: float = MISSING
    translate: float = MISSING
    scale: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING
    jitter_p: float = MISSING
    erasing: float = MISSING
    progressive_size: int = MISSING
    progressive_epochs: int = MISSING
    num_workers: int = MISSING
    download: bool = MISSING
    verify: bool = MISSING
    fetch_timeout_s: float = MISSING

    def __post_init__(self):
        one_of("data.pipeline", self.pipeline, PIPELINES)
        one_of("data.val", self.val, VAL_SPLITS)
        problem = holdout_problem(self.holdout_size, MNIST_TRAIN_SIZE)
        check(problem is None, problem)
        problem = fold_problem(self.folds, self.fold, MNIST_TRAIN_SIZE)
        check(problem is None, problem)
        check(self.batch_size > 0, f"data.batch_size={self.batch_size} must be > 0")
        check(self.eval_batch_size > 0, f"data.eval_batch_size={self.eval_batch_size} must be > 0")
        check(0 <= self.rotation <= 180, f"data.rotation={self.rotation} must be in [0, 180] degrees")
        check(0 <= self.translate <= 0.5, f"data.translate={self.translate} must be in [0, 0.5] (image fraction)")
        check(0 <= self.scale < 1, f"data.scale={self.scale} must be in [0, 1)")
        check(0 <= self.erasing <= 1, f"data.erasing={self.erasing} must be a probability in [0, 1]")
        for key in ("rotation_p", "jitter_p"):
            check(0 <= getattr(self, key) <= 1, f"data.{key}={getattr(self, key)} must be a probability in [0, 1]")
        for key in ("brightness", "contrast"):
            check(0 <= getattr(self, key) < 1, f"data.{key}={getattr(self, key)} must be in [0, 1)")
        check(8 <= self.progressive_size <= 56,
               f"data.progressive_size={self.progressive_size} must be in [8, 56] pixels")
        check(self.progressive_epochs >= 0, f"data.progressive_epochs={self.progressive_epochs} must be >= 0")
        check(self.num_workers >= 0, f"data.num_workers={self.num_workers} must be >= 0")
        check(self.fetch_timeout_s > 0, f"data.fetch_timeout_s={self.fetch_timeout_s} must be > 0")


@dataclass
class OptimizerConf:
    """A torch.optim class (`_target_`) and its arguments; a key an option does not use stays None."""

    _target_: str = MISSING
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    decay_norm_and_bias: bool = MISSING
    momentum: Optional[float] = None  # sgd
    nesterov: Optional[bool] = None  # sgd
    betas: Optional[List[float]] = None  # adam, adamw

    def __post_init__(self):
        check(self.lr > 0, f"optimizer.lr={self.lr} must be > 0")
        check(self.weight_decay >= 0, f"optimizer.weight_decay={self.weight_decay} must be >= 0")
        check(self.momentum is None or 0 <= self.momentum < 1,
               f"optimizer.momentum={self.momentum} must be in [0, 1)")
        check(self.betas is None or (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)),
               f"optimizer.betas={self.betas and list(self.betas)} must be two numbers in [0, 1)")
        cls = locate(self._target_, "optimizer._target_", OPTIMIZER_BASE)
        check_arguments("optimizer.", cls, class_arguments(dataclasses.asdict(self)),
                        f"{self._target_} (optimizer={self.name})", supplied=["params"])


@dataclass
class SchedulerConf:
    """A torch.optim.lr_scheduler class (`_target_`, null for a constant lr) and its arguments."""

    _target_: Optional[str] = MISSING
    name: str = MISSING
    interval: str = MISSING  # epoch | step: how often it is stepped
    monitor: Optional[str] = None  # the metric it watches (plateau)
    step_size: Optional[int] = None  # step
    gamma: Optional[float] = None  # step
    mode: Optional[str] = None  # plateau
    patience: Optional[int] = None  # plateau
    factor: Optional[float] = None  # plateau
    max_lr: Optional[float] = None  # onecycle
    total_steps: Optional[int] = None  # onecycle (None: the whole run)
    pct_start: Optional[float] = None  # onecycle
    div_factor: Optional[float] = None  # onecycle
    final_div_factor: Optional[float] = None  # onecycle
    T_max: Optional[int] = None  # cosine
    eta_min: Optional[float] = None  # cosine
    milestones: Optional[List[float]] = None  # piecewise
    factors: Optional[List[float]] = None  # piecewise

    def __post_init__(self):
        one_of("scheduler.interval", self.interval, INTERVALS)
        positive = {"step_size": 1, "patience": 0, "div_factor": 1e-12, "final_div_factor": 1e-12, "T_max": 1}
        for key, low in positive.items():
            value = getattr(self, key)
            check(value is None or value >= low, f"scheduler.{key}={value} must be >= {low:g}")
        for key in ("gamma", "factor", "pct_start"):
            value = getattr(self, key)
            check(value is None or 0 < value <= 1, f"scheduler.{key}={value} must be in (0, 1]")
        check(self.eta_min is None or self.eta_min >= 0, f"scheduler.eta_min={self.eta_min} must be >= 0")
        if self.milestones is not None or self.factors is not None:
            problem = piecewise_problem(self.milestones or [], self.factors or [])
            check(problem is None, problem)
        if self._target_:
            cls = locate(self._target_, "scheduler._target_", SCHEDULER_BASE)
            check_arguments("scheduler.", cls, class_arguments(dataclasses.asdict(self)),
                            f"{self._target_} (scheduler={self.name})", supplied=["optimizer"])
        else:
            given = class_arguments(dataclasses.asdict(self))
            check(not given, f"scheduler.{next(iter(given), '')} does nothing with scheduler={self.name} "
                              "(a constant lr)")


# Lightning's precision values (lightning_fabric's _PRECISION_INPUT, named here so a typo is refused before
# Lightning is imported) and ours, auto
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "16", "bf16", "64",
              "transformer-engine", "transformer-engine-float16")


@dataclass
class TrainerConf:
    """`pl.Trainer`'s arguments: these are typed; any other one may be added as +trainer.<name>=<value>
    (validate() checks the name against pl.Trainer and passes it on in `extra`). None: Lightning's default."""

    accelerator: str = MISSING
    devices: Any = MISSING
    strategy: str = MISSING
    sync_batchnorm: bool = MISSING
    precision: Any = MISSING
    max_epochs: int = MISSING
    deterministic: bool = MISSING
    log_every_n_steps: int = MISSING
    enable_progress_bar: bool = MISSING
    enable_model_summary: bool = MISSING
    fast_dev_run: Any = False
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: Optional[int] = None
    gradient_clip_val: Optional[float] = None
    overfit_batches: Any = None  # a number (or fraction) of training batches, trained on every epoch
    profiler: Optional[str] = None  # simple | advanced | pytorch: the report goes to <run dir>/fit-profile.txt
    detect_anomaly: Optional[bool] = None  # the op that first makes a NaN/inf in backward raises
    extra: Dict[str, Any] = field(default_factory=dict)  # other pl.Trainer arguments (+trainer.<name>)

    def __post_init__(self):
        check_mapping("trainer.extra", self.extra)
        one_of("trainer.precision", str(self.precision), PRECISIONS)
        check(self.max_epochs >= 1, f"trainer.max_epochs={self.max_epochs} must be >= 1")
        check(self.profiler in (None, "simple", "advanced", "pytorch"),
               f"trainer.profiler={self.profiler!r} is not one of: simple, advanced, pytorch")
        check(self.log_every_n_steps >= 1, f"trainer.log_every_n_steps={self.log_every_n_steps} must be >= 1")


@dataclass
class CallbacksConf:
    rules: bool = MISSING
    stop_at_target: bool = MISSING
    checkpoint: bool = MISSING
    lr_monitor: bool = MISSING
    plots: bool = MISSING
    progress: str = MISSING
    progress_refresh: int = MISSING
    ema: float = MISSING

    def __post_init__(self):
        one_of("callbacks.progress", self.progress, PROGRESS)
        check(0 <= self.ema < 1, f"callbacks.ema={self.ema} must be in [0, 1) (0: off; e.g. 0.99)")
        check(self.progress_refresh >= 1, f"callbacks.progress_refresh={self.progress_refresh} must be >= 1")


@dataclass
class Budget:
    """The game: "99.4% val acc, under 20k parameters, within 20 epochs, no fully connected layer", judged
    by mnist_arch/rules.py. The values live in conf/budget/default.yaml."""

    max_params: int = MISSING  # trainable parameters, counted at fit start
    max_epochs: int = MISSING  # trainer.max_epochs above this is refused before training
    target_acc: float = MISSING  # val acc (fraction) that counts as reached
    allow_fc: bool = MISSING  # nn.Linear / LazyLinear / Bilinear anywhere in the net is refused
    max_macs: Optional[int] = None  # per image; None: no limit (and what a record written before it reads as)

    def __post_init__(self):
        if self.max_params <= 0:
            raise ConfigError(f"budget.max_params={self.max_params} must be > 0")
        if self.max_macs is not None and self.max_macs <= 0:
            raise ConfigError(f"budget.max_macs={self.max_macs} must be > 0 (or null: no limit)")
        if self.max_epochs < 1:
            raise ConfigError(f"budget.max_epochs={self.max_epochs} must be >= 1")
        if not 0 < self.target_acc <= 1:
            raise ConfigError(f"budget.target_acc={self.target_acc} must be a fraction in (0, 1]")

    def check_epochs(self, max_epochs: int) -> None:
        """The epoch rule is judged on the config too, so an over-long run never starts."""
        if max_epochs > self.max_epochs:
            raise ConfigError(f"trainer.max_epochs={max_epochs} is over budget.max_epochs={self.max_epochs}; "
                              f"to play with a larger budget, also set budget.max_epochs={max_epochs}")


@dataclass
class DistillConf:
    """Knowledge distillation (Hinton et al. 2015, "Distilling the knowledge in a neural network"): the student's
    loss is alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy with the labels,
    the teacher's outputs taken on the same augmented batch. `teacher`: a run dir (or its checkpoint) of a net
    this project trained, any size, or a list of them (their softened outputs averaged)."""

    teacher: Any = None  # null: no teacher; a run dir; or a list of run dirs
    alpha: float = MISSING
    temperature: float = MISSING

    def __post_init__(self):
        if isinstance(self.teacher, str):
            self.teacher = [self.teacher]
        check(self.teacher is None or (isinstance(self.teacher, list) and self.teacher and
                                        all(isinstance(t, str) and t for t in self.teacher)),
               f"distill.teacher={self.teacher!r} must be a run dir, a list of them, or null")
        check(0 < self.alpha <= 1, f"distill.alpha={self.alpha} must be in (0, 1]")
        check(self.temperature > 0, f"distill.temperature={self.temperature} must be > 0")


@dataclass
class Config:
    model: ModelConf = MISSING
    data: DataConf = MISSING
    optimizer: OptimizerConf = MISSING
    scheduler: SchedulerConf = MISSING
    trainer: TrainerConf = MISSING
    callbacks: CallbacksConf = MISSING
    logger: Dict[str, Any] = MISSING  # name -> a Lightning logger's `_target_` and arguments (train/job.py builds them)
    budget: Budget = MISSING
    seed: int = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    label_smoothing: float = MISSING
    tta: str = MISSING  # none | shifts: also score val and test with test-time augmentation (beside the plain score)
    threads: Optional[int] = None  # torch CPU threads; None: shared out between parallel jobs / DDP ranks
    ckpt_path: Optional[str] = None  # resume: "last" (<run dir>/checkpoints/last.ckpt) or a checkpoint file
    test_weights: str = MISSING
    save: bool = MISSING  # false: no files but the log (debug=fdr)
    # python -m mnist_arch.search search=<space>: typed and checked by the search (mnist_arch/search/schema.py); a
    # run ignores it
    search: Optional[Dict[str, Any]] = None
    distill: DistillConf = MISSING

    def __post_init__(self):
        one_of("test_weights", self.test_weights, TEST_WEIGHTS)
        check(self.save or not (self.callbacks.checkpoint or self.callbacks.plots or self.callbacks.lr_monitor),
               "save=false writes no files: also set callbacks.checkpoint=false callbacks.plots=false "
               "callbacks.lr_monitor=false (debug=fdr does)")
        # Picking the best epoch by test accuracy and then reporting that test accuracy is tuning on it.
        check(self.test_weights != "best" or self.data.val != "test",
               "test_weights=best needs data.val=holdout or fold: with val=test the best epoch is chosen on the test set")
        check(0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        one_of("tta", self.tta, TTA)
        check(self.threads is None or self.threads >= 1, f"threads={self.threads} must be >= 1 (or null)")
        self.budget.check_epochs(self.trainer.max_epochs)
        check(self.data.progressive_epochs < self.trainer.max_epochs,
               f"data.progressive_epochs={self.data.progressive_epochs} would resize every epoch of "
               f"trainer.max_epochs={self.trainer.max_epochs}: the net must see 28x28 images before it is scored")


# The Trainer arguments the run sets itself: from its callbacks, logger and run dir.
SET_BY_THE_RUN = {"callbacks": "the callbacks group", "logger": "the logger group", "default_root_dir": "the run dir"}


def validate(cfg: DictConfig) -> Config:
    """Composed config -> dataclasses; raises ConfigError (one line) on the first bad key or value."""
    _refuse_unread_keys(cfg)
    extra = _trainer_extra(cfg)
    typed = copy.deepcopy(cfg)  # the caller's cfg keeps the extra keys (config.yaml records them)
    with open_dict(typed.trainer):
        for key in extra:
            del typed.trainer[key]
    conf: Config = OmegaConf.to_object(typed)
    conf.trainer.extra = extra
    return conf


def _refuse_unread_keys(cfg: DictConfig) -> None:
    """`+key=value` or `+group.key=value` adds a key the schema does not have; OmegaConf would drop it
    unread. (trainer: see _trainer_extra; model.net: the net's constructor checks its arguments.)"""
    top = [f.name for f in dataclasses.fields(Config)]
    refuse_unknown("", [k for k in cfg if k != "hydra"], top, "the config")
    for node in dataclasses.fields(Config):
        group = cfg.get(node.name)
        # logger: checked as built; search: by the search's own schema (mnist_arch/search/schema.py)
        if isinstance(group, DictConfig) and node.name not in ("trainer", "logger", "search"):
            known = [f.name for f in dataclasses.fields(node.type)]
            refuse_unknown(f"{node.name}.", group, known, f"the {node.name} group")


def refuse_unknown(prefix: str, keys, known, where: str) -> None:
    for key in keys:
        if key not in known:
            raise ConfigError(f"{prefix}{key} is not a key of {where}; {did_you_mean(key, known, prefix, 'its keys')}")


def _trainer_extra(cfg: DictConfig) -> Dict[str, Any]:
    """The keys of `trainer` beyond the typed ones: each must be an argument of pl.Trainer."""
    check(not cfg.trainer.get("extra"), "trainer.extra is filled by the run: give any other pl.Trainer argument "
                                         "as +trainer.<name>=<value>")
    typed = {f.name for f in dataclasses.fields(TrainerConf)}
    extra = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
             for k, v in cfg.trainer.items() if k not in typed}
    if not extra:
        return {}
    # Deferred: Lightning costs 2.6 s past this module; only a config with trainer keys beyond the schema's pays it
    import pytorch_lightning as pl

    for key in extra:
        check(key not in SET_BY_THE_RUN, f"trainer.{key} is set by {SET_BY_THE_RUN.get(key)}, not here")
    check_arguments("trainer.", pl.Trainer, extra, "pl.Trainer")
    return extra
