"""What one trial of a search is, and what confirms a study's finalists: the objective Optuna calls and the
confirm runs on the 60k. The command is mnist_arch/commands/search.py (python -m mnist_arch.search).

`objective` reads like optuna-examples' pytorch_lightning_simple.py: sample overrides from the space,
judge the net against the budget (one that breaks a rule is recorded infeasible in milliseconds and never
trained, its constraint values teaching the sampler the boundary), train it reporting val acc to the
pruner each epoch, return the objectives.
"""
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from mnist_arch.config.compose import compose, load, register_schema
from mnist_arch.config.foreign import check_foreign
from mnist_arch.config.schema import ConfigError
from mnist_arch.errors import Pruned, RunError
from mnist_arch.models import build_net
from mnist_arch.results.layer_table import layer_table, totals_of
from mnist_arch.results.record import RunRecord
from mnist_arch.rules import judge_net
from mnist_arch.search import space as search_space
from mnist_arch.search.claims import Claims, patient
from mnist_arch.search.race import train_claimed
from mnist_arch.search.schema import SearchConf
from mnist_arch.search.study import (
    PRUNER_STARTUP,
    QUIET_OVERRIDES,
    Job,
    counts,
    front,
    in_processes,
    optuna_module,
    quiet_worker,
    run_overrides,
    set_attrs,
    stop_if_interrupted,
)

register_schema()
CONFIRM_LOCK = ".confirm.lock"  # in the study's confirm/ folder: held to claim a confirm run


def objective(trial, job: Job) -> Sequence[float]:
    """Sample, judge, train, score: the values of the study's objectives for one trial."""
    # Deferred: training imports Lightning (2.8 s past the search command's imports), paid by the workers that
    # train, not by `search --help` or a refused option
    from mnist_arch.train.callbacks import Pruning
    from mnist_arch.train.job import train

    # the sampled values may come from the storage (a trial queued again, or by another worker): values only
    overrides = [*job.overrides, *check_foreign(search_space.sample(trial, job.search.space), f"trial {trial.number}")]
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
    set_attrs(trial, params=verdict.params, macs=macs)
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
        pruning = Pruning(trial, len(job.search.objectives) == 1, prune, lambda call: patient(call, job.storage))
        record = train(cfg, run_dir, overrides, callbacks=[pruning], test=False)
    except Pruned as e:
        trial.set_user_attr("pruned", str(e))
        raise optuna_module().TrialPruned(str(e)) from None
    stop_if_interrupted(record)
    values = {"val_acc": record.final_val_acc, "params": record.params, "macs": record.macs_per_image,
              "train_seconds": round(sum(record.epoch_time_s), 2)}
    trial.set_user_attr("train_seconds", values["train_seconds"])
    return [values[o] for o in job.search.objectives]


def _infeasible(trial, job: Job, run_dir: Path, overrides: List[str], model: Optional[str], status: str,
                message: str, params: Optional[int], macs: Optional[int]) -> Sequence[float]:
    """Record a trial whose net breaks a rule: its summary.json, and the worst values (the constraints, set
    by the caller where the net could be built, say by how much it missed)."""
    trial.set_user_attr("infeasible", status)
    if params is None:  # not even built: infeasible by a margin the sampler can see
        for name in ("params", "macs", "fc", "output"):
            trial.set_constraint(name, 0)
        trial.set_constraint("buildable", 1)
    RunRecord.refused(status, message, run_dir, model=model, params=params, macs_per_image=macs,
                      overrides=overrides).write(run_dir)
    worst = {"val_acc": 0.0, "params": float(params or 1e12), "macs": float(macs or 1e12), "train_seconds": 1e9}
    return [worst[o] for o in job.search.objectives]


def to_confirm(study, search: SearchConf, target: float) -> List:
    """search.confirm trials: the best by holdout val acc, or, with two objectives, the cheapest points of the
    front that reach `target`; if none does, the front's most accurate (the nearest to it), cheapest first."""
    picked = front(study, search, best=search.confirm)
    if len(search.objectives) == 1:
        return picked
    reached = [t for t in picked if t.values[0] >= target]  # the front is sorted cheapest first
    if reached:
        return reached[:search.confirm]
    nearest = sorted(picked, key=lambda t: -t.values[0])[:search.confirm]
    return sorted(nearest, key=lambda t: t.values[1])


def confirm(study, job: Job, threads: Optional[int], target: float) -> str:
    """search.confirm trials retrained on the 60k, the 10k test scored with the final weights, once per
    confirm seed; the table RESULTS.md uses. Which trials: to_confirm."""
    picked = to_confirm(study, job.search, target)
    return confirm_designs([(str(t.number), f"{t.number:04d}", run_overrides(t, job.overrides)) for t in picked], job,
                           threads)


def confirm_designs(designs: Sequence[Tuple[str, str, Sequence[str]]], job: Job, threads: Optional[int]) -> str:
    """Each design (its name in the table, its folder under confirm/, its overrides) retrained on the 60k over
    search.confirm_seeds, the 10k test scored with the final weights, by search.workers processes that claim
    the runs under a lock like the race's; resumable: a finished seed is not run again, one cut short resumes
    from its last epoch. The table of confirm.md."""
    from mnist_arch.results.leaderboard import mean_std  # deferred: scipy (0.6 s), only when a confirm runs

    units = [(_confirm_dir(job.study_dir, folder, seed), _confirm_overrides(overrides), seed)
             for _, folder, overrides in designs for seed in job.search.confirm_seeds]
    if job.search.workers == 1:
        _confirm_work(units, job.study_dir, job.search.storage, threads)
    else:
        failed = in_processes(_confirm_work, [(units, job.study_dir, job.search.storage, threads, i)
                                              for i in range(job.search.workers)])
        if failed:
            raise ConfigError(f"confirm: {failed} worker(s) failed (see above); run the same command again to go on")
    rows = ["| design | params | MACs | seeds | test acc (final epoch) | min | train s | command |",
            "|---|---|---|---|---|---|---|---|"]
    for name, folder, design_overrides in designs:
        records = [RunRecord.read(_confirm_dir(job.study_dir, folder, seed)) for seed in job.search.confirm_seeds]
        going = [r.run_dir for r in records if r.status != "completed"]
        if going:  # claimed by a worker elsewhere (another Slurm job on the shared disk)
            raise ConfigError(f"confirm: {name}: {len(going)} run(s) not completed yet ({going[0]}, ...); run the "
                              "same command again when they end")
        accs = [r.test_acc for r in records]
        mean, std = mean_std(accs)
        std = std or 0.0  # one seed
        seconds = sum(sum(r.epoch_time_s) for r in records) / len(records)
        rows.append(f"| {name} | {records[0].params:,} | {records[0].macs_per_image:,} | "
                    f"{','.join(map(str, job.search.confirm_seeds))} | {100 * mean:.2f}% ± {100 * std:.2f} | "
                    f"{100 * min(accs):.2f}% | {seconds:.0f} | "
                    f"`python -m mnist_arch.run {' '.join(_confirm_overrides(design_overrides))}` |")
    return "\n".join(rows)


def _confirm_overrides(design_overrides: Sequence[str]) -> List[str]:
    base = [o for o in design_overrides if not o.startswith(("data.val=", "seed="))]
    return [*base, "data.val=test", "callbacks.stop_at_target=false", "test_weights=final"]


def _confirm_dir(study_dir: Path, folder: str, seed: int) -> Path:
    return study_dir / "confirm" / folder / f"seed{seed}"


def _confirm_work(units: Sequence[Tuple[Path, List[str], int]], study_dir: Path, storage: Optional[str],
                  threads: Optional[int], worker: Optional[int] = None) -> None:
    """One worker: claim a confirm run not yet completed, train it (resuming one cut short), until none is left.
    Alone (worker None) it shows each run's epochs; one of several says a line per run."""
    if worker is not None:
        quiet_worker()
    (study_dir / "confirm").mkdir(parents=True, exist_ok=True)
    claims = Claims.of(storage, study_dir)
    def next_unit():
        with claims.locked(CONFIRM_LOCK):
            unit = next((u for u in units if RunRecord.read(u[0]).status != "completed" and not claims.claimed(u[0])),
                        None)
            if unit is not None:
                claims.claim(unit[0])
            return unit

    while True:
        unit = patient(next_unit, storage)
        if unit is None:
            return
        path, overrides, seed = unit
        what = f"confirm: {path.parent.name} seed {seed}"
        quiet = ["trainer.enable_progress_bar=false"] if worker is not None else []
        record, seconds = train_claimed(path, [*overrides, f"seed={seed}"], threads, what, claims, here=quiet)
        if worker is not None:
            print(f"{what} completed, test acc {record.test_acc:.4f} ({seconds:.0f} s; worker {worker})", flush=True)


# --- the command ----------------------------------------------------------------------------------------


def base_overrides(search: SearchConf, given: Sequence[str]) -> List[str]:
    """What every trial starts from: the space's experiment (unless one was given), the command line's run
    overrides (not search.* or hydra.*), trainer.precision=auto (unless one was given), and the holdout split.
    auto: bf16-mixed in a worker of one torch thread on a CPU with native bf16, where it trains 1.14-1.34x
    faster and was not told apart from fp32 on five nets' held-out seeds (BENCHMARKS.md, "bf16 on the CPU");
    32-true anywhere else."""
    if any(o.replace(" ", "") in ("data.val=test", "data.val='test'") for o in given):
        raise ConfigError("data.val=test: a search validates on the holdout split; the 10k test set is scored "
                          "only by search.confirm")
    runs = [o for o in given if not o.lstrip("+~").startswith(("search", "hydra."))]
    experiment = [] if any(o.startswith("experiment=") for o in runs) or not search.experiment else \
        [f"experiment={search.experiment}"]
    precision = [] if any(o.lstrip("+").startswith("trainer.precision=") for o in runs) else ["trainer.precision=auto"]
    return [*experiment, *runs, *precision, "data.val=holdout", *QUIET_OVERRIDES]
