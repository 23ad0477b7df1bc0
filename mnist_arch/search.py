"""Search the design space: a budget-aware, multi-objective, pruned Optuna study of nets and recipes.

    python -m mnist_arch.search search=8k                                   # conf/search/8k.yaml
    python -m mnist_arch.search search=8k search.n_trials=80 search.workers=2
    python -m mnist_arch.search search=speedrun search.confirm=3            # then the top 3 on the 60k, 5 seeds

A study lives in outputs/search/<study_name>/: study.db (Optuna's storage, SQLite unless search.storage
names another), trials/<number>/ (a run dir per trial, summary.json included, so `report` reads a study as
it reads a sweep), study.json (the counts, the front, what pruning saved), front.md and front.png. The same
command again resumes the study: what finished is kept, the missing trials run, a trial cut short (Ctrl-C, a
killed worker) is run again.

Every trial validates on the holdout split (data.val=test is refused: the 10k test set is for `confirm`
only). `objective` reads like optuna-examples' pytorch_lightning_simple.py: sample overrides from the
space, judge the net against the budget (one that breaks a rule is recorded infeasible in milliseconds and
never trained, its constraint values teaching the sampler the boundary), train it reporting val acc to
the pruner each epoch, return the objectives.
"""
import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mnist_arch import space as search_space
from mnist_arch.cli import command
from mnist_arch.config import Config, ConfigError, SearchConf, compose, load, register_schema
from mnist_arch.errors import Pruned, RunError
from mnist_arch.record import RunRecord

log = logging.getLogger("mnist_arch")
register_schema()
STALE_AFTER_S = 3600  # a RUNNING trial whose worker is gone, or silent for this long, is failed and retried
QUIET = ("mnist_arch", "pytorch_lightning", "lightning.pytorch", "lightning_fabric", "optuna")
PRUNER_STARTUP = 5  # trained trials before the pruner may stop one (their curves make the median)
QUIET_OVERRIDES = ["trainer.enable_progress_bar=false"]  # a trial's progress is the study's line per trial


@dataclass
class Job:
    """What a worker needs: the study's settings and folder, and the overrides every trial starts from."""

    search: SearchConf
    study_dir: Path
    storage: str
    overrides: List[str]
    max_epochs: int


def objective(trial, job: Job) -> Sequence[float]:
    """Sample, judge, train, score: the values of the study's objectives for one trial."""
    from mnist_arch.callbacks import Pruning
    from mnist_arch.layer_table import layer_table, totals_of
    from mnist_arch.models import build_net
    from mnist_arch.rules import judge_net
    from mnist_arch.training import train

    overrides = [*job.overrides, *search_space.sample(trial, job.search.space)]
    trial.set_user_attr("overrides", overrides)
    run_dir = job.study_dir / "trials" / f"{trial.number:04d}"
    cfg = compose(overrides)
    model = OmegaConf.select(cfg, "model.name")
    try:
        conf = load(overrides)
        net = build_net(asdict(conf.model))
        macs = totals_of(layer_table(net))["macs_per_image"]
        verdict = judge_net(net, conf.budget, macs=macs)
    except RunError as e:  # a shape the net refuses (a map below 1x1), a bad output: infeasible
        return _infeasible(trial, job, run_dir, overrides, model, e.status, str(e), params=None, macs=None)
    b = conf.budget
    _set(trial, params=verdict.params, macs=macs)
    for name, value in {"params": verdict.params - b.max_params, "macs": macs - b.max_macs if b.max_macs else 0,
                        "fc": len(verdict.fc) if not b.allow_fc else 0, "output": 0 if verdict.output_ok else 1,
                        "buildable": 0}.items():
        trial.set_constraint(name, value)  # <= 0: within the budget; by how much it missed, otherwise
    broken = verdict.failure()
    if broken:
        return _infeasible(trial, job, run_dir, overrides, model, *broken, params=verdict.params, macs=macs)
    try:
        # The pruner may stop a run once PRUNER_STARTUP trials were trained to the end (Optuna's own startup
        # count would include the infeasible ones, which report nothing)
        prune = len(job.search.objectives) == 1 and counts(trial.study)["complete"] >= PRUNER_STARTUP
        record = train(cfg, run_dir, overrides, callbacks=[Pruning(trial, len(job.search.objectives) == 1, prune)],
                       test=False)
    except Pruned as e:
        trial.set_user_attr("pruned", str(e))
        raise _optuna().TrialPruned(str(e)) from None
    if record.status == "interrupted":
        raise KeyboardInterrupt
    values = {"val_acc": record.final_val_acc, "params": record.params, "macs": record.macs_per_image,
              "train_seconds": round(sum(record.epoch_time_s), 2)}
    trial.set_user_attr("train_seconds", values["train_seconds"])
    return [values[o] for o in job.search.objectives]


def _infeasible(trial, job: Job, run_dir: Path, overrides: List[str], model: Optional[str], status: str,
                message: str, params: Optional[int], macs: Optional[int]) -> Sequence[float]:
    """Record a trial whose net breaks a rule: its summary.json, and the worst values (the constraints, set
    by the caller where the net could be built, say by how much it missed)."""
    from mnist_arch import provenance

    trial.set_user_attr("infeasible", status)
    if params is None:  # not even built: infeasible by a margin the sampler can see
        for name in ("params", "macs", "fc", "output"):
            trial.set_constraint(name, 0)
        trial.set_constraint("buildable", 1)
    RunRecord(status=status, error=message, model=model, params=params, macs_per_image=macs, overrides=overrides,
              run_dir=str(run_dir), git_commit=provenance.git_state()[0]).write(run_dir)
    worst = {"val_acc": 0.0, "params": float(params or 1e12), "macs": float(macs or 1e12), "train_seconds": 1e9}
    return [worst[o] for o in job.search.objectives]


# --- the study: storage, sampler, pruner, and the workers that share it ----------------------------------


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("the search needs Optuna 5: pip install 'mnist-arch[optuna]'") from None
    return optuna


def open_study(job: Job, worker: int = 0):
    """The study, created or loaded. Each worker's sampler gets its own seed, from search.seed, its index
    and the trials the study already holds: the same seed everywhere would have two workers (or a resumed
    study) propose the very same points while the sampler is still drawing at random."""
    optuna = _optuna()
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
              "none": optuna.pruners.NopPruner}[_pruner(s)]()
    with warnings.catch_warnings():  # constant_liar and group are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(study_name=s.study_name, storage=storage, load_if_exists=True,
                                   sampler=samplers[s.sampler](), pruner=pruner,
                                   directions=["maximize"] + ["minimize"] * (len(s.objectives) - 1))


def _exists(storage, s: SearchConf) -> bool:
    return any(summary.study_name == s.study_name for summary in storage.get_all_studies())


def _pruner(s: SearchConf) -> str:
    return ("median" if len(s.objectives) == 1 else "none") if s.pruner == "auto" else s.pruner


def _storage(url: str):
    """An Optuna storage from a URL: journal:///<file> for a journal file (on a shared disk for several
    machines), any other an RDB (SQLite waits up to a minute for a lock another worker holds)."""
    optuna = _optuna()
    if url.startswith("journal:///"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[len("journal://"):]))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


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
    optuna = _optuna()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", ":")).rpartition(":")
        gone = host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
        silent = time.time() - t.user_attrs.get("alive_at", t.datetime_start.timestamp()) > STALE_AFTER_S
        if gone or silent:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            _retry(study, t)
            failed.append(t.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry(study, trial) -> None:
    """Queue the same values again, once: a trial cut short by an interruption is not the design's fault."""
    if "retry_of" not in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def work(job: Job, threads: Optional[int] = None, worker: int = 0, quiet: bool = True) -> None:
    """One worker: ask the study for a trial while it holds fewer trained trials than search.n_trials, run
    it, tell the result. The ask happens under a lock in the study folder, so workers (processes here, or
    Slurm jobs sharing the folder) never run more trials than asked, and none twice."""
    from filelock import FileLock

    optuna = _optuna()
    if threads:
        import torch

        torch.set_num_threads(threads)
    if quiet:  # a worker's console is the study's progress lines; each trial keeps its own files
        import pytorch_lightning  # noqa: F401 - first: importing it sets its loggers' levels

        for name in QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
    study = open_study(job, worker)
    while True:
        with FileLock(str(job.study_dir / ".ask.lock")):
            fail_stale(study)
            c = counts(study)
            trained = c["complete"] + c["pruned"] + c["running"]
            if trained >= job.search.n_trials or c["failed"] >= job.search.n_trials or \
                    c["infeasible"] >= 20 * job.search.n_trials:
                return
            trial = study.ask()
            _set(trial, worker=f"{socket.gethostname()}:{os.getpid()}", alive_at=time.time())
        try:
            values = objective(trial, job)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except KeyboardInterrupt:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _retry(study, study.get_trials(deepcopy=False)[trial.number])
            raise
        except Exception as e:  # noqa: BLE001 - a crashing trial is recorded (its summary.json too) and the study goes on
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, values)
        _progress(study, trial.number, job)


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
    print(f"[{c['complete'] + c['pruned']}/{job.search.n_trials}] trial {number}: {what}", flush=True)


def _set(trial, **attrs) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _work_in_process(args) -> None:  # a spawned worker's entry
    job, threads, worker = args
    work(job, threads, worker)


def run_workers(job: Job, threads: Optional[int]) -> None:
    """search.workers processes on this machine (one: this process), each with its share of the threads."""
    if job.search.workers == 1:
        return work(job, threads)
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked torch state
    workers = [context.Process(target=_work_in_process, args=((job, threads, i),)) for i in range(job.search.workers)]
    for w in workers:
        w.start()
        time.sleep(1.0)  # stagger the first asks, so the workers' first trials differ from the start
    try:
        for w in workers:
            w.join()
    except KeyboardInterrupt:  # Ctrl-C reached every worker too: let each record its trial, then stop
        for w in workers:
            w.join(timeout=60)
        raise


# --- what the study found ------------------------------------------------------------------------------


def front(study, search: SearchConf, best: int = 5) -> List:
    """The trials to show: the Pareto front of the feasible complete trials (two objectives), or the `best`
    few by val acc (one)."""
    optuna = _optuna()
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not t.user_attrs.get("infeasible")]
    if len(search.objectives) == 1:
        return sorted(done, key=lambda t: -t.values[0])[:best]
    front_ = [t for t in done if not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1]
                                         and o.values != t.values for o in done)]
    return sorted(front_, key=lambda t: t.values[1])


def summarize(study, job: Job) -> Dict:
    """study.json: the counts, the front, and what pruning saved against training every trial to the end."""
    records = {int(p.parent.name): RunRecord.read(p) for p in (job.study_dir / "trials").glob("*/summary.json")}
    trained = [r for r in records.values() if r.status in ("completed", "pruned")]
    epochs = sum(r.epochs_run for r in trained)
    seconds = sum(sum(r.epoch_time_s) for r in trained)
    # a pruned trial, had it run on, would have cost its own mean epoch time for each epoch it did not run
    unpruned = sum(sum(r.epoch_time_s) + (job.max_epochs - r.epochs_run) * sum(r.epoch_time_s) / max(1, r.epochs_run)
                   for r in trained)
    shown = front(study, job.search)
    return {"study": job.search.study_name, "storage": job.storage, "objectives": job.search.objectives,
            "pruner": _pruner(job.search), "counts": counts(study),
            "pruning": {"epochs_trained": epochs, "epochs_unpruned": len(trained) * job.max_epochs,
                        "train_seconds": round(seconds, 1), "train_seconds_unpruned_estimate": round(unpruned, 1)},
            "front": [{"trial": t.number, **dict(zip(job.search.objectives, t.values)),
                       "params": t.user_attrs.get("params"), "macs": t.user_attrs.get("macs"),
                       "train_seconds": t.user_attrs.get("train_seconds"),
                       "command": "python -m mnist_arch.run " + " ".join(
                           o for o in t.user_attrs.get("overrides", []) if o not in QUIET_OVERRIDES)}
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


def confirm(study, job: Job, threads: Optional[int]) -> str:
    """The top search.confirm trials (two objectives: up to that many of the front) retrained on the 60k,
    the 10k test scored with the final weights, once per confirm seed; the table RESULTS.md uses."""
    from mnist_arch.training import train

    picked = front(study, job.search, best=job.search.confirm)[:job.search.confirm]
    rows = ["| trial | params | MACs | seeds | test acc (final epoch) | min | train s | command |",
            "|---|---|---|---|---|---|---|---|"]
    for t in picked:
        base = [o for o in t.user_attrs["overrides"] if not o.startswith(("data.val=", "seed="))]
        overrides = [*base, "data.val=test", "callbacks.stop_at_target=false", "test_weights=final"]
        records = []
        for seed in job.search.confirm_seeds:
            run_dir = job.study_dir / "confirm" / f"{t.number:04d}" / f"seed{seed}"
            done = RunRecord.read(run_dir) if (run_dir / "summary.json").exists() else None
            if done is None or done.status != "completed":  # resumable: a finished seed is not run again
                cfg = compose([*overrides, f"seed={seed}", *([f"threads={threads}"] if threads else [])])
                done = train(cfg, run_dir, [*overrides, f"seed={seed}"])
            records.append(done)
        accs = [r.test_acc for r in records]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
        seconds = sum(sum(r.epoch_time_s) for r in records) / len(records)
        rows.append(f"| {t.number} | {records[0].params:,} | {records[0].macs_per_image:,} | "
                    f"{','.join(map(str, job.search.confirm_seeds))} | {100 * mean:.2f}% ± {100 * std:.2f} | "
                    f"{100 * min(accs):.2f}% | {seconds:.0f} | `python -m mnist_arch.run {' '.join(overrides)}` |")
    return "\n".join(rows)


# --- the command ----------------------------------------------------------------------------------------


def base_overrides(search: SearchConf, given: Sequence[str]) -> List[str]:
    """What every trial starts from: the space's experiment (unless one was given), the command line's run
    overrides (not search.* or hydra.*), and the holdout split."""
    if any(o.replace(" ", "") in ("data.val=test", "data.val='test'") for o in given):
        raise ConfigError("data.val=test: a search validates on the holdout split; the 10k test set is scored "
                          "only by search.confirm")
    runs = [o for o in given if not o.lstrip("+~").startswith(("search", "hydra."))]
    experiment = [] if any(o.startswith("experiment=") for o in runs) or not search.experiment else \
        [f"experiment={search.experiment}"]
    return [*experiment, *runs, "data.val=holdout", *QUIET_OVERRIDES]


@command  # Hydra's own errors, before the job
@hydra.main(version_base="1.3", config_path="pkg://mnist_arch.conf", config_name="study")
@command  # the job's errors, inside Hydra's job runner
def main(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "search") is None:
        raise ConfigError("pick a search space: search=<name> (conf/search/: 4k, 8k, 20k, recipe, speedrun)")
    _optuna()
    conf: Config = load(HydraConfig.get().overrides.task)  # the search group, checked
    search = conf.search
    study_dir = Path(HydraConfig.get().runtime.output_dir)
    overrides = base_overrides(search, HydraConfig.get().overrides.task)
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    fixed = {k: v for k, v in search_space.specs(search.space).items() if k not in given}  # given: fixed
    search = replace(search, space=fixed)
    base = load(overrides)  # the trials' recipe, checked before any trial (a typo fails here, not 40 times)
    threads = base.threads or (max(1, len(os.sched_getaffinity(0)) // search.workers) if search.workers > 1 else None)
    job = Job(search, study_dir, search.storage or f"sqlite:///{study_dir / 'study.db'}", overrides,
              base.trainer.max_epochs)
    study_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(job)
    if not study.trials:  # a new study starts from the known designs, if the space names any
        for point in search.start:
            study.enqueue_trial(point)
    c = counts(study)
    print(f"study {search.study_name} in {study_dir}: {c['complete'] + c['pruned']} of {search.n_trials} trials "
          f"trained; {search.workers} worker(s); pruner {_pruner(search)}; objectives {', '.join(search.objectives)}",
          flush=True)
    try:
        run_workers(job, threads)
    except KeyboardInterrupt:
        print(f"interrupted; the study is kept: run the same command again to go on ({study_dir})", file=sys.stderr)
        sys.exit(130)
    fail_stale(study)  # a worker killed meanwhile leaves its trial RUNNING: fail it (and queue it again) now
    summary = summarize(study, job)
    (study_dir / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = front_table(summary)
    (study_dir / "front.md").write_text(table + "\n")
    print("\n" + table)
    _plot(study_dir, search)
    if search.confirm:
        result = confirm(study, job, threads)
        (study_dir / "confirm.md").write_text(result + "\n")
        print(f"\nconfirmed on the 60k, 10k test, final epoch ({study_dir / 'confirm.md'}):\n{result}")


def _plot(study_dir: Path, search: SearchConf) -> None:
    """front.png: every trained trial's val acc against the second objective (params by default)."""
    from mnist_arch import leaderboard

    records = leaderboard.load(study_dir / "trials")
    if not any(r.status == "completed" for r in records):
        return
    x = search.objectives[1] if len(search.objectives) > 1 else "params"
    differing, rows, _ = leaderboard.leaderboard(records)
    leaderboard.pareto(rows, differing, "final", x=x, label=lambda row: f"#{Path(row['run_dirs'][0]).name}"
                  ).savefig(study_dir / "front.png", dpi=100)


if __name__ == "__main__":
    main()
