"""An Optuna study shared by workers: its storage, sampler and pruner, the loop each worker runs, what is
done with trials cut short, and what the study found. The search command (mnist_arch/commands/search.py)
gives it the objective; this module knows nothing of nets.

Workers ask the study for a trial under a file lock in the study folder, so however many run (processes
here, Slurm jobs on a shared disk) the study ends with exactly search.n_trials trained trials, each run
once. A worker marks its trial with its host and process id, and the time, each epoch; a RUNNING trial
whose process is gone or that has been silent for STALE_AFTER_S is failed and queued again once, through
Optuna's public API (Study.tell with a trial number, Study.enqueue_trial), the same for every storage.

Why not Optuna's heartbeats (RDBStorage's heartbeat_interval and grace_period, RetryFailedTrialCallback):
they run inside Study.optimize only (with ask and tell they do nothing, as Optuna's docs say), and optimize
cannot keep the guarantee above: MaxTrialsCallback stops a worker after its trial ends, so N workers
overshoot the count by up to N - 1. The journal storage has no heartbeats at all.
"""
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from mnist_arch.cli import NOT_ACTIONABLE
from mnist_arch.config.compose import override_pairs
from mnist_arch.config.foreign import check_foreign
from mnist_arch.errors import ConfigError, printable, redact
from mnist_arch.results.record import RunRecord
from mnist_arch.search.claims import Claims, StorageAway, alive, missing_driver, patient
from mnist_arch.search.schema import SearchConf

STALE_AFTER_S = 3600  # a RUNNING trial whose worker is gone, or silent for this long, is failed and retried
QUIET = ("mnist_arch", "pytorch_lightning", "lightning.pytorch", "lightning_fabric", "optuna")
PRUNER_STARTUP = 5  # trained trials before the pruner may stop one (their curves make the median)
QUIET_OVERRIDES = ["trainer.enable_progress_bar=false"]  # a trial's progress is the study's line per trial
LOCK = ".ask.lock"  # the study's lock (a file in its folder, or the database's): held to open it and to ask a trial


@dataclass
class Job:
    """What a worker needs: the study's settings and folder, and the overrides every trial starts from."""

    search: SearchConf
    study_dir: Path
    storage: str
    overrides: List[str]
    max_epochs: int


def optuna_module():
    try:  # deferred: an optional dependency (the optuna extra), said in one line where it is missing
        import optuna
    except ImportError:
        raise ConfigError("the search needs Optuna 5: pip install 'mnist-arch[optuna]'") from None
    return optuna


def open_study(job: Job, worker: int = 0, claims: Optional[Claims] = None):
    """The study, created or loaded. Each worker's sampler gets its own seed, from search.seed, its index
    and the trials the study already holds: the same seed everywhere would have two workers (or a resumed
    study) propose the very same points while the sampler is still drawing at random."""
    # Under the study's lock: Slurm jobs of one search start at once, and two processes creating a new storage
    # (Optuna's tables) and study side by side fail on each other's
    with (claims or Claims.of(job.storage, job.study_dir)).locked(LOCK):
        return _open_study(job, worker)


def _open_study(job: Job, worker: int):
    optuna = optuna_module()
    s = job.search
    storage = _storage(job.storage)
    held = len(storage.get_all_trials(storage.get_study_id_from_name(s.study_name))) if _exists(storage, s) else 0
    seed = s.seed + 1000 * worker + held
    samplers = {  # both learn the budget from the constraints each trial sets (Trial.set_constraint)
        # multivariate, grouped TPE models the stages' widths together; constant_liar keeps parallel workers
        # from asking the same point
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP,
                                                            n_warmup_steps=s.pruner_warmup_epochs),
              "percentile": lambda: optuna.pruners.PercentilePruner(s.pruner_percentile, PRUNER_STARTUP,
                                                                    s.pruner_warmup_epochs),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(1, s.pruner_warmup_epochs),
                                                                  max_resource=job.max_epochs),
              "none": optuna.pruners.NopPruner}[pruner_name(s)]()
    with warnings.catch_warnings():  # constant_liar and group are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(study_name=s.study_name, storage=storage, load_if_exists=True,
                                   sampler=samplers[s.sampler](), pruner=pruner,
                                   directions=["maximize"] + ["minimize"] * (len(s.objectives) - 1))


def _exists(storage, s: SearchConf) -> bool:
    return any(summary.study_name == s.study_name for summary in storage.get_all_studies())


def pruner_name(s: SearchConf) -> str:
    return ("median" if len(s.objectives) == 1 else "none") if s.pruner == "auto" else s.pruner


def _storage(url: str):
    """An Optuna storage from a URL: journal:///<file> for a journal file (on a shared disk for several
    machines), any other an RDB (SQLite waits up to a minute for a lock another worker holds)."""
    optuna = optuna_module()
    try:
        if url.startswith("journal:///"):
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[len("journal://"):]))
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else \
            {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True} if url.startswith("postgresql") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except ImportError:  # SQLAlchemy knows the dialect; its driver is not installed
        raise missing_driver(url) from None
    except Exception as e:  # noqa: BLE001 - a folder that is not there, a file that is no database, a bad URL
        reason = re.sub(r"\s*\(Background on this error.*|\s*\[SQL:.*", "", str(e).splitlines()[0] if str(e) else "")
        raise ConfigError(f"search.storage={redact(url)}: cannot be opened ({type(e).__name__}: {redact(reason)}); give a "
                          "sqlite:///<file> in a folder that exists, journal:///<file>, or a reachable database URL") \
            from None


def counts(study) -> Dict[str, int]:
    """trained (complete or pruned), infeasible, running and failed trials."""
    states = {"complete": 0, "pruned": 0, "infeasible": 0, "running": 0, "waiting": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        name = "infeasible" if t.user_attrs.get("infeasible") else \
            {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting"}.get(
                t.state.name, "failed")
        states[name] += 1
    return states


def fail_stale(study) -> List[int]:
    """RUNNING trials whose worker is gone (its process no longer runs on this machine) or has been silent
    for STALE_AFTER_S: failed, and run again once (as a WAITING trial with the same values)."""
    optuna = optuna_module()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", ":")).rpartition(":")
        gone = host == socket.gethostname() and pid.isdigit() and not alive(int(pid))
        silent = time.time() - t.user_attrs.get("alive_at", t.datetime_start.timestamp()) > STALE_AFTER_S
        if gone or silent:
            # Study.tell takes a trial number from any process; another worker may have failed it first
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            _retry(study, t)
            failed.append(t.number)
    return failed


def _retry(study, trial) -> None:
    """Queue the same values again, once: a trial cut short by an interruption is not the design's fault."""
    if "retry_of" not in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def quiet_worker() -> None:
    """A worker's console is the study's (or race's) progress lines; each run keeps its own files. A spawned
    worker has no Hydra logging: the library messages nobody can act on (mnist_arch/cli.py) are dropped here."""
    # Deferred to here, and first: importing Lightning sets its loggers' levels, which the lines below then lower
    import pytorch_lightning  # noqa: F401

    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in NOT_ACTIONABLE.values():
        warnings.filterwarnings("ignore", message=f".*{pattern.pattern}")


def work(job: Job, objective: Callable, threads: Optional[int] = None, worker: int = 0, quiet: bool = True) -> None:
    """One worker: ask the study for a trial while it holds fewer trained trials than search.n_trials, run
    it, tell the result. The ask happens under a lock in the study folder, so workers (processes here, or
    Slurm jobs sharing the folder) never run more trials than asked, and none twice."""
    optuna = optuna_module()
    claims = Claims.of(job.storage, job.study_dir)
    if threads:
        torch.set_num_threads(threads)
    if quiet:
        quiet_worker()
    study = open_study(job, worker, claims)

    def ask():
        """Under the study's lock: a new trial, or None when the study holds what it should."""
        with claims.locked(LOCK):
            fail_stale(study)
            c = counts(study)
            trained = c["complete"] + c["pruned"] + c["running"]
            if trained >= job.search.n_trials or c["failed"] >= job.search.n_trials or \
                    c["infeasible"] >= 20 * job.search.n_trials:
                return None
            trial = study.ask()
            set_attrs(trial, worker=f"{socket.gethostname()}:{os.getpid()}", alive_at=time.time())
            return trial

    while True:
        # the database may be away for a while (a restart): each step waits for it, within STORAGE_PATIENCE_S
        trial = patient(ask, job.storage)
        if trial is None:
            return
        try:
            values = objective(trial, job)
        except optuna.TrialPruned:
            patient(lambda: study.tell(trial, state=optuna.trial.TrialState.PRUNED), job.storage)
        except KeyboardInterrupt:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _retry(study, study.get_trials(deepcopy=False)[trial.number])
            raise
        except StorageAway:
            raise  # the trial stays RUNNING; the next start fails it and queues it again
        except Exception as e:  # noqa: BLE001 - a crashing trial is recorded (its summary.json too) and the study goes on
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            patient(lambda: (trial.set_user_attr("error", message),
                             study.tell(trial, state=optuna.trial.TrialState.FAIL)), job.storage)
        else:
            patient(lambda: study.tell(trial, values, skip_if_finished=True), job.storage)
        patient(lambda: _progress(study, trial.number, job), job.storage)


def _progress(study, number: int, job: Job) -> None:
    t = study.get_trials(deepcopy=False)[number]
    c = counts(study)
    attrs = t.user_attrs
    if attrs.get("infeasible"):
        params = f", {attrs['params']:,} params" if "params" in attrs else ""
        what = f"infeasible ({attrs['infeasible']}{params})"
    elif t.state.name == "PRUNED":
        what = attrs.get("pruned", "pruned")
    elif t.state.name == "COMPLETE":
        what = f"val acc {t.values[0]:.4f} · {attrs['params']:,} params · {attrs.get('train_seconds', 0):.0f} s"
    else:
        what = f"failed: {attrs.get('error', t.state.name.lower())}"
    print(f"[{c['complete'] + c['pruned']}/{job.search.n_trials}] trial {number}: {printable(what)}", flush=True)


def set_attrs(trial, **attrs) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def run_workers(job: Job, objective: Callable, threads: Optional[int]) -> None:
    """search.workers processes on this machine (one: this process), each with its share of the threads;
    `objective` (trial, job) -> values, a module-level function (a spawned worker imports it)."""
    if job.search.workers == 1:
        return work(job, objective, threads)
    # staggered, so the workers' first asks (and so their first trials) differ from the start
    in_processes(work, [(job, objective, threads, i) for i in range(job.search.workers)], stagger_s=1.0)


class Terminated(KeyboardInterrupt):
    """SIGTERM stopped the search (kill, scancel, a session ending): the command exits 143, not Ctrl-C's 130."""


def exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's code for a search stopped by a signal: 128 + its number (SIGTERM 15, SIGINT 2)."""
    return 143 if isinstance(stop, Terminated) else 130


def stop_if_interrupted(record: RunRecord) -> None:
    """A run Ctrl-C or SIGTERM cut short stops its worker the way the signal would have (its run kept)."""
    if record.status == "interrupted":
        raise Terminated if record.signal == "SIGTERM" else KeyboardInterrupt


def _call(target_and_args) -> None:  # a spawned process's entry
    _end_with_driver()
    target, args = target_and_args
    try:
        target(*args)
    except KeyboardInterrupt as e:  # its run is recorded; the driver says what to do next (no traceback per worker)
        sys.exit(exit_code(e))


def _end_with_driver() -> None:
    """A worker whose driver is gone (SIGKILL, a crash) would train on with nobody to read its lines: when
    the driver's process ends, the worker sends itself SIGTERM, which Lightning turns into a stop after the
    batch, the run recorded interrupted and resumable (between runs, SIGTERM simply ends the worker)."""
    driver = multiprocessing.parent_process()

    def watch():
        multiprocessing.connection.wait([driver.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-driver", daemon=True).start()


def in_processes(target: Callable, per_process: Sequence[tuple], stagger_s: float = 0.0) -> int:
    """target(*args) in one spawned process per entry of `per_process` (a fresh interpreter each: no forked
    torch state), all waited for; how many failed. `target`: a module-level function (a spawned process
    imports it). Ctrl-C reaches every process of the terminal's group; SIGTERM reaches the driver alone, so
    the driver passes it on to each worker and waits for them to record their runs (raising Terminated)."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_call, args=((target, args),)) for args in per_process]

    told = []

    def pass_on(signum, frame):
        for p in processes:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)
        if not told:  # once: a second SIGTERM is passed on without cutting short the wait for the workers
            told.append(signum)
            raise Terminated

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
    previous = signal.signal(signal.SIGTERM, pass_on) if main else None
    try:
        for p in processes:
            p.start()
            time.sleep(stagger_s)
        for p in processes:
            p.join()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM passed on: let each process record its run, then stop
        for p in processes:
            if p.pid is not None:
                p.join(timeout=60)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return sum(bool(p.exitcode) for p in processes)


# --- runs that workers share (a race's, a confirm's): claimed under a lock --------------------------------

def front(study, search: SearchConf, best: int = 5) -> List:
    """The trials to show: the Pareto front of the feasible complete trials (two objectives), or the `best`
    few by val acc (one)."""
    optuna = optuna_module()
    if len(search.objectives) == 1:
        done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if not t.user_attrs.get("infeasible")]
        return sorted(done, key=lambda t: -t.values[0])[:best]
    # Optuna's own front, which leaves out the trials whose constraints (Trial.set_constraint) say infeasible;
    # the attribute check covers trials recorded infeasible without constraints
    return sorted((t for t in study.best_trials if not t.user_attrs.get("infeasible")), key=lambda t: t.values[1])


def planned_epochs(record: RunRecord, job: Job) -> int:
    """The epochs a trial would have trained unpruned: what it ran, if it was not pruned; else the study's
    trainer.max_epochs, or its own where the space samples it."""
    if record.status != "pruned":
        return record.epochs_run
    given = override_pairs(record.overrides).get("trainer.max_epochs")
    return int(given) if given and given.isdigit() else job.max_epochs  # a record is data: a bad value is ignored


def run_overrides(trial, base: Optional[Sequence[str]] = None) -> List[str]:
    """A trial's overrides as a run takes them: without the switches that keep a trial's console quiet. With
    `base` (this command's own overrides), for a run to train: read from the study's storage, which need not be
    the user's, so every override not in `base` must set values only (mnist_arch/config/foreign.py)."""
    given = trial.user_attrs.get("overrides", [])
    overrides = [o for o in given if o not in QUIET_OVERRIDES] if isinstance(given, list) else [given]
    if base is not None:
        check_foreign([o for o in overrides if o not in base], f"study trial {trial.number}")
    return overrides


def summarize(study, job: Job) -> Dict:
    """study.json: the counts, the front, and what pruning saved against training every trial to the end."""
    records = [RunRecord.read(p) for p in (job.study_dir / "trials").glob("*/summary.json")]
    # (epochs run, seconds, epochs it would have run unpruned) of each trained trial
    trained = [(r.epochs_run, sum(r.epoch_time_s), planned_epochs(r, job)) for r in records
               if r.status in ("completed", "pruned")]
    # a pruned trial, had it run on, would have cost its own mean epoch time for each epoch it did not run
    unpruned = sum(seconds + (planned - run) * seconds / max(1, run) for run, seconds, planned in trained)
    shown = front(study, job.search)
    return {"study": job.search.study_name, "storage": redact(job.storage), "objectives": job.search.objectives,
            "pruner": pruner_name(job.search), "counts": counts(study),
            "pruning": {"epochs_trained": sum(run for run, _, _ in trained),
                        "epochs_unpruned": sum(planned for _, _, planned in trained),
                        "train_seconds": round(sum(seconds for _, seconds, _ in trained), 1),
                        "train_seconds_unpruned_estimate": round(unpruned, 1)},
            "front": [{"trial": t.number, **dict(zip(job.search.objectives, t.values)),
                       "params": t.user_attrs.get("params"), "macs": t.user_attrs.get("macs"),
                       "train_seconds": t.user_attrs.get("train_seconds"),
                       "command": "python -m mnist_arch.run " + " ".join(run_overrides(t))}
                      for t in shown]}


def front_table(summary: Dict) -> str:
    title = "Pareto front" if len(summary["objectives"]) > 1 else "Best trials"
    lines = [f"{title} of study {summary['study']} (holdout val acc of the final epoch; reproduce a trial with its "
             "command):", "", "| trial | val acc | params | MACs | train s | command |", "|---|---|---|---|---|---|"]
    for row in summary["front"]:
        lines.append(f"| {row['trial']} | {row['val_acc']:.4f} | {row['params']:,} | {row['macs']:,} | "
                     f"{row['train_seconds'] or 0:.0f} | `{row['command']}` |")
    c, p = summary["counts"], summary["pruning"]
    lines += ["", f"{c['complete']} complete, {c['pruned']} pruned, {c['infeasible']} infeasible (never trained), "
              f"{c['failed']} failed, {c['running'] + c['waiting']} unfinished. Pruner {summary['pruner']}: "
              f"{p['epochs_trained']} of {p['epochs_unpruned']} epochs trained, {p['train_seconds']:.0f} s against "
              f"~{p['train_seconds_unpruned_estimate']:.0f} s unpruned."]
    return "\n".join(lines)
