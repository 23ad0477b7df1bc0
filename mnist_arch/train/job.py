"""A run: train one architecture under a composed config, test it, and write its record (`summary.json`).

`train` reads top to bottom: setup (config -> seed -> data -> net -> module) -> callbacks -> trainer ->
fit -> test -> record. The commands that train (`python -m mnist_arch.run`, a search's trials) call it; they
decide what to do when it fails.
"""
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler
from torch import nn

from mnist_arch.cli import one_line
from mnist_arch.config.schema import Config, ConfigError, TrainerConf, validate
from mnist_arch.data import MNISTDataModule
from mnist_arch.errors import BadFile, RunError, from_tracker, redact
from mnist_arch.files import write_atomic
from mnist_arch.inference.trained import load_teachers
from mnist_arch.locate import check_arguments, locate
from mnist_arch.models import build_net, check_weights, read_checkpoint
from mnist_arch.models.build import is_plain, names_code
from mnist_arch.results import compare, provenance, tracking
from mnist_arch.results import tensorboard as tensorboard_tabs
from mnist_arch.results.layer_table import describe
from mnist_arch.results.record import RunRecord
from mnist_arch.rules import Verdict
from mnist_arch.train.callbacks import StopAtTarget, build_callbacks, find, interrupting_signal
from mnist_arch.train.cpu import auto_precision, set_threads
from mnist_arch.train.history import FinalPredictions, History
from mnist_arch.train.module import Classifier
from mnist_arch.train.plots import RunPlots

log = logging.getLogger("mnist_arch")


@dataclass
class Setup:
    """What a run and the lr range test both start from."""

    conf: Config
    datamodule: MNISTDataModule
    spec: Dict[str, Any]  # the model group: what every checkpoint stores as net_spec
    net: nn.Module  # described before any compile
    layers: str  # the layer table
    totals: Dict[str, Any]  # MACs and receptive field, for summary.json
    verdict: Verdict  # the rules' judgement of the net
    model: Classifier
    recorded: Dict[str, Any]  # the config as records keep it (provenance.recorded): config.yaml, trackers, checkpoints
    distilled_from: Optional[Dict[str, Any]] = None  # distill.teacher: which nets taught it (their record's words)


def setup(cfg: DictConfig, scheduler: Optional[Dict[str, Any]] = None) -> Setup:
    """config -> threads -> seed -> data -> net -> layer table -> module. `scheduler`: one to train with
    instead of the config's (the lr range test drives the lr itself)."""
    conf: Config = validate(cfg)  # every bad key or value fails here, before any data is fetched
    # Imported after validation so that a typo is reported in ~3 s, not after Lightning's ~6 s import.

    set_threads(conf)
    pl.seed_everything(conf.seed, workers=True)
    datamodule = MNISTDataModule(**asdict(conf.data), seed=conf.seed)
    spec = asdict(conf.model)
    net = build_net(spec)
    layers, totals, verdict = describe(net, conf.budget)  # before any compile
    datamodule.check_net(net)  # a net that cannot take data.progressive_size is refused here, not mid-fit
    teachers, distilled_from = [], None
    if conf.distill.teacher:  # before training: a teacher that saw the student's validation images is refused

        teachers, distilled_from = load_teachers(conf.distill.teacher, conf.data)
    kept = provenance.recorded(cfg)  # once: config.yaml, every tracker and the checkpoints take this
    model = Classifier(net, asdict(conf.optimizer), scheduler or asdict(conf.scheduler), spec, conf.channels_last,
                       conf.compile and scheduler is None, conf.label_smoothing,
                       recorded={"optimizer": kept["optimizer"], "scheduler": kept["scheduler"],
                                 "label_smoothing": kept["label_smoothing"]} if scheduler is None else None,
                       teachers=teachers, distill_alpha=conf.distill.alpha, temperature=conf.distill.temperature,
                       tta=conf.tta)
    return Setup(conf, datamodule, spec, net, layers, totals, verdict, model, kept, distilled_from)


def train(cfg: DictConfig, run_dir: Path, overrides: Optional[List[str]] = None, callbacks: Sequence = (),
          test: bool = True) -> RunRecord:
    """One run of `cfg` in `run_dir`. `overrides`: what the record says the run was given (default: this
    Hydra job's command line); `callbacks`: more Lightning callbacks (a search's pruning); test=False leaves
    the 10k test set untouched (a search's trials)."""
    clock = {"began": time.perf_counter(), "age": provenance.process_age_s()}
    run = setup(cfg)
    conf = run.conf

    resume = _resume_path(conf.ckpt_path, run_dir, run.net, run.spec["name"])
    callbacks = [*build_callbacks(conf, run_dir), *callbacks]
    loggers = build_loggers(conf, run_dir, run.net, run.layers, run.recorded, overrides) if conf.save else []
    trainer = pl.Trainer(**trainer_arguments(conf.trainer, run_dir), callbacks=callbacks, logger=loggers or False,
                         default_root_dir=run_dir)
    record = _record(run, trainer, run_dir, resume, overrides)
    writer = trainer.is_global_zero and conf.save  # under DDP every rank runs this; one writes the files
    if writer:
        _write_inputs(run.recorded, run_dir, record, run.layers)

    started = clock["fit"] = time.perf_counter()
    try:
        # weights_only=True said here, not left to a default: a checkpoint is read as data
        trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=resume, weights_only=True)
        clock["fitted"] = time.perf_counter()
        if test:
            best = _best_to_test(conf, find(callbacks, ModelCheckpoint, monitor="val/acc"))
            # verbose=False: Lightning's table of test metrics would repeat what the headline says
            results = trainer.test(run.model, datamodule=run.datamodule, ckpt_path=best, weights_only=True,
                                   verbose=False)
            record.test_ckpt, record.test_acc = "best" if best else "final", results[0]["test/acc"] if results else None
            record.test_acc_tta = results[0].get("test/acc_tta") if results else None
        clock["tested"] = time.perf_counter()
        record.status = "completed"
    except BaseException as e:
        record.status, record.error, record.signal = _outcome(e)
        if record.status != "interrupted":
            raise
    finally:
        if record.distilled_from:  # "once": before the first epoch, where every epoch shows the same images
            record.distilled_from["teacher_outputs"] = run.model.teacher_outputs
        _finish(record, callbacks, trainer, started)
        if writer:
            record.predictions = _keep_predictions(callbacks, run.datamodule, run_dir, trainer)
            _tensorboard_hparams(loggers, run.recorded, record)
            record.phases_s = phases(clock, callbacks)
            record.write(run_dir)
            _tracking_finish(loggers, record, run_dir)
    return record


def phases(clock: Dict[str, Optional[float]], callbacks: Sequence) -> Dict[str, float]:
    """Where this process's time went until now, in order (the record's phases_s): a phase that did not happen
    (a fit that failed, no test) is left out. `clock`: train()'s stamps (perf_counter), and the process's age as
    train() began; the History callback timed the epochs' parts."""
    history = find(callbacks, History)
    marks = [("start", clock["began"] - clock["age"] if clock.get("age") is not None else None),
             ("setup", clock["began"]), ("fit_start", clock.get("fit"))]
    if history is not None and history.first_started is not None:
        marks += [("epochs", history.first_started), ("fit_end", history.ended)]
    marks += [("test", clock.get("fitted") if clock.get("tested") else None),
              ("record", clock.get("tested") or clock.get("fitted"))]
    known = [(name, at) for name, at in marks if at is not None]  # each phase lasts until the next one's start
    spent: Dict[str, float] = {}
    for (name, at), (_, until) in zip(known, [*known[1:], ("end", time.perf_counter())]):
        spent.update(history.seconds if name == "epochs" else {name: until - at})
    return {name: round(seconds, 3) for name, seconds in spent.items()}


# --- the steps of train(), in the order it takes them -----------------------------------------------


def _resume_path(ckpt_path: Optional[str], run_dir: Path, net, name: str) -> Optional[Path]:
    """ckpt_path=last -> <run dir>/checkpoints/last.ckpt (the last completed epoch); or a file path. Read
    here as data and checked against the net, so a checkpoint that is damaged, holds pickled objects,
    is not a run's or does not fit is one line before training, whatever Lightning would make of it."""
    if ckpt_path is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.exists():
        hint = (" (resume in the interrupted run's dir: add hydra.run.dir=<that dir>)" if ckpt_path == "last"
                else "")
        raise ConfigError(f"ckpt_path={ckpt_path}: no checkpoint at {path}{hint}")
    checkpoint = read_checkpoint(path)
    missing = [key for key in RESUMABLE if key not in checkpoint]
    if missing:
        raise BadFile(f"{path}: not a checkpoint a run can resume from (it has no {', '.join(missing)}); resume "
                      "takes the last.ckpt or interrupted.ckpt a run wrote")
    check_weights(net, checkpoint["state_dict"], "net.", path, name)
    return path


RESUMABLE = ("epoch", "global_step", "optimizer_states", "loops")  # what Lightning restores a fit from


def _record(run: Setup, trainer, run_dir: Path, resume: Optional[Path], overrides: Optional[List[str]]) -> RunRecord:
    """The run's record as it starts: what it is, under which budget, from which command."""
    conf, verdict = run.conf, run.verdict
    return RunRecord(model=conf.model.name, net_spec=run.spec, params=verdict.params, fc_layers=verdict.fc,
                     output_shape=list(verdict.output_shape), **run.totals, budget=asdict(conf.budget),
                     seed=conf.seed, val_split=conf.data.val, resumed_from=resume and str(resume),
                     folds=conf.data.folds if conf.data.val == "fold" else None,
                     fold=conf.data.fold if conf.data.val == "fold" else None,
                     data_verified=conf.data.verify, run_dir=str(run_dir), rank=trainer.global_rank,
                     overrides=provenance.overrides() if overrides is None else list(overrides),
                     world_size=trainer.world_size, overfit_batches=conf.trainer.overfit_batches or None,
                     distilled_from=run.distilled_from and {**run.distilled_from, "alpha": conf.distill.alpha,
                                                            "temperature": conf.distill.temperature})


def trainer_arguments(trainer: TrainerConf, run_dir: Path) -> Dict[str, Any]:
    """What pl.Trainer gets (None values left to Lightning's defaults): a profiler named in the config writes its
    report into the run dir; precision=auto resolved for this machine, once the torch threads are set."""
    typed = {k: v for k, v in asdict(trainer).items() if k != "extra" and v is not None}
    if trainer.precision == "auto":
        typed["precision"] = auto_precision(trainer.accelerator)
    if trainer.profiler:
        kinds = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}
        typed["profiler"] = kinds[trainer.profiler](dirpath=run_dir, filename="profile")
    return {**typed, **trainer.extra}


def build_loggers(conf: Config, run_dir: Path, net, layers: str, recorded: Optional[Dict[str, Any]] = None,
                  overrides: Optional[List[str]] = None) -> list:
    """Each entry of the logger group, built with the run dir as its save_dir: `_target_` a Lightning logger
    class, every other key one of its arguments (checked against the class, with a did-you-mean, before any
    step) and a plain value (a `_target_` nested in one is refused, never built), except a TensorBoard logger's
    `graph` (ours: the net in the GRAPHS tab). An MLflow logger gets its store checked and the run's group
    (mnist_arch/results/tracking.py), and the `recorded` config (interpolations as written) as params. A
    tracker whose package is missing, or whose server refuses, is one line naming what to do."""
    loggers, group = [], _group(run_dir, conf, overrides)
    for name, entry in conf.logger.items():
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ConfigError(f"logger.{name} is not a logger: an entry needs _target_ (a Lightning logger class) "
                              "and that class's arguments, e.g. conf/logger/csv.yaml")
        arguments = dict(entry)
        target = arguments.pop("_target_")
        cls = locate(target, f"logger.{name}._target_", Logger)
        graph = arguments.pop("graph", False) if issubclass(cls, TensorBoardLogger) else False
        for key, value in arguments.items():
            if not is_plain(value) or names_code(value):
                raise ConfigError(f"logger.{name}.{key}: a logger's arguments are plain values (numbers, strings, "
                                  "lists and mappings of them); a nested _target_ is not built")
        check_arguments(f"logger.{name}.", cls, arguments, target, supplied=["save_dir"])
        if issubclass(cls, MLFlowLogger):
            arguments = tracking.prepare(arguments, run_dir, group)
        if issubclass(cls, WandbLogger):
            arguments = tracking.prepare_wandb(arguments, run_dir, group)
        try:  # a class taking **kwargs (TensorBoardLogger passes them to its SummaryWriter) refuses them here
            logger = cls(**arguments, save_dir=str(run_dir))
            if isinstance(logger, TensorBoardLogger):
                tensorboard_tabs.add_model(logger, net, layers, graph)
            if isinstance(logger, (MLFlowLogger, WandbLogger)) and recorded is not None:
                tracking.check_artifact_store(logger)
                tracking.log_config(logger, recorded, group)
        except (TypeError, ImportError) as e:
            if isinstance(e, ImportError) or "No module named" in str(e):
                raise ConfigError(f"logger={name} needs its package: pip install 'mnist-arch[{name}]' "
                                  f"({one_line(str(e))})") from None
            raise ConfigError(f"logger.{name}: {target} refused its arguments ({one_line(str(e))})") from None
        except Exception as e:  # noqa: BLE001 - a tracking server's refusal (an HTTP 500, a bad experiment)
            if not from_tracker(e):
                raise
            raise ConfigError(f"logger.{name}: the tracker refused: {redact(one_line(str(e)))[:300]}") \
                from None
        loggers.append(logger)
    return loggers


def _group(run_dir: Path, conf: Config, overrides: Optional[List[str]]) -> Dict[str, str]:
    """What finds a run among others in a tracker: its sweep or study folder, its setting (the overrides but the
    seed: the seeds of one setting share it), its seed."""
    given = provenance.overrides() if overrides is None else list(overrides)
    sweep = run_dir.parent
    # mode is None where a config was composed outside a Hydra job (compose with the hydra node, in tests)
    if HydraConfig.initialized() and getattr(HydraConfig.get().mode, "name", None) == "MULTIRUN":
        sweep = Path(HydraConfig.get().sweep.dir)
    return {"sweep": str(sweep), "setting": " ".join(o for o in given if not o.startswith("seed=")) or "(defaults)",
            "seed": str(conf.seed)}


def _write_inputs(recorded: Dict[str, Any], run_dir: Path, record: RunRecord, layers: str) -> None:
    """What the run starts from: the config as recorded (mnist_arch/results/provenance.py: resolved, but an
    interpolation that reads the environment kept as written), the layer table, the code's commit (and diff).
    Written by a rename: a link planted at a name is replaced, never followed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(recorded))
    write_atomic(run_dir / "layers.txt", layers + "\n")
    log.info("%s\n%s", record.model, layers)
    record.git_commit, record.git_diff = provenance.git_state(run_dir)
    record.versions = provenance.versions()


def _best_to_test(conf: Config, best_checkpoint) -> Optional[str]:
    """The checkpoint the 10k test scores: with val=holdout (or fold) the best-on-holdout one is a fair pick; with
    val=test the test set must not pick weights, so the final weights are tested (None).
    test_weights=final tests the last epoch's weights either way (targets stated on the final epoch)."""
    if conf.test_weights == "final" or conf.data.val == "test" or best_checkpoint is None:
        return None
    return best_checkpoint.best_model_path or None


def _finish(record: RunRecord, callbacks: Sequence, trainer, started: float) -> None:
    """What the run did, whatever ended it: the per-epoch history, the plots, the time, the device."""
    history = find(callbacks, History)
    if history:
        record.add_history(history.epochs)
    stop = find(callbacks, StopAtTarget)
    if stop is not None and stop.stopped_at is not None and stop.stopped_at < (trainer.max_epochs or 0):
        record.stopped_at_target = stop.stopped_at  # before its planned last epoch: the target chose it
    plots = find(callbacks, RunPlots)
    if plots:
        record.plots_time_s, record.plots = round(plots.seconds, 3), sorted(plots.written)
    record.wall_time_s = round(time.perf_counter() - started, 2)
    record.device = provenance.device_name(trainer.strategy.root_device)
    record.precision = str(trainer.precision)


def _keep_predictions(callbacks: Sequence, datamodule, run_dir: Path, trainer) -> Optional[str]:
    """predictions.npz (mnist_arch/results/compare.py): the final epoch's val predictions and the test's; its name,
    or None when there is nothing to keep. Under DDP each process saw a shard: not kept (said in the log)."""
    kept = find(callbacks, FinalPredictions)
    if kept is None:
        return None
    if trainer.world_size > 1:
        log.info("predictions.npz not kept: under DDP each process predicted a shard of the images")
        return None
    splits = kept.splits(datamodule.eval_index)
    if not splits:
        return None
    compare.save(run_dir / compare.FILE_NAME, splits)
    return compare.FILE_NAME


def _outcome(e: BaseException) -> Tuple[str, Optional[str], Optional[str]]:
    """(status, error, signal) of a fit or test that raised. Lightning answers Ctrl-C with a graceful
    stop and sys.exit(1) raised while handling the KeyboardInterrupt, and SIGTERM with SIGTERMException
    after the current batch; the epochs completed so far (and their checkpoints) are kept."""
    signal_name = interrupting_signal(e)
    if signal_name:
        return "interrupted", None, signal_name
    if isinstance(e, RunError):
        return e.status, str(e), None
    return "failed", f"{type(e).__name__}: {e}", None


def _tracking_finish(loggers: list, record: RunRecord, run_dir: Path) -> None:
    for logger in loggers:
        if isinstance(logger, (MLFlowLogger, WandbLogger)):
            last = run_dir / "checkpoints" / "last.ckpt"
            try:
                tracking.finish(logger, record, run_dir, last if last.is_file() else None)
            except Exception as e:  # noqa: BLE001 - the run and its record are done; the tracker's copy is not
                if not from_tracker(e):
                    raise
                log.warning("the tracker did not take the run's tags and files (%s); the run dir has them all",
                            redact(str(e).splitlines()[0] if str(e) else type(e).__name__)[:300])


def _tensorboard_hparams(loggers: list, recorded: Dict[str, Any], record: RunRecord) -> None:
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and record.epochs_run:
            tensorboard_tabs.add_hparams(logger, recorded, record)
