"""Search the design space: a budget-aware, multi-objective, pruned Optuna study of nets and recipes.

    python -m mnist_arch.search search=8k                                   # conf/search/8k.yaml
    python -m mnist_arch.search search=8k search.n_trials=80 search.workers=2
    python -m mnist_arch.search search=speedrun search.confirm=3            # then the front's first 3 on the 60k
    python -m mnist_arch.search search=8k search.race=5 search.confirm=1    # race the 5 best, confirm the winner
    python -m mnist_arch.search search=8k search.race_candidates=finalists.yaml   # race any designs (race.py)

A study lives in outputs/search/<study_name>/: study.db (Optuna's storage, SQLite unless search.storage
names another), trials/<number>/ (a run dir per trial, summary.json included, so `report` reads a study as
it reads a sweep), study.json (the counts, the front, what pruning saved), front.md and front.png. The same
command again resumes the study: what finished is kept, the missing trials run, a trial cut short (Ctrl-C, a
killed worker) is run again (mnist_arch/search/study.py).

Every trial validates on the holdout split (data.val=test is refused: the 10k test set is for `confirm`
only). `objective` reads like optuna-examples' pytorch_lightning_simple.py: sample overrides from the
space, judge the net against the budget (one that breaks a rule is recorded infeasible in milliseconds and
never trained, its constraint values teaching the sampler the boundary), train it reporting val acc to
the pruner each epoch, return the objectives.
"""
import json
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mnist_arch.cli import hydra_command
from mnist_arch.search import space as search_space
from mnist_arch.config.compose import load, override_pairs, register_schema
from mnist_arch.config.schema import Config, ConfigError
from mnist_arch.search.schema import SearchConf, check_search_keys, search_conf
from mnist_arch.errors import printable, redact
from mnist_arch.files import write_atomic
from mnist_arch.search import race
from mnist_arch.search.objective import base_overrides, confirm, confirm_designs, objective
from mnist_arch.search.study import (Job, counts, exit_code, fail_stale, front, front_table, open_study, optuna_module,
                                     pruner_name, run_overrides, run_workers, summarize)
from mnist_arch.train.cpu import threads_each

register_schema()


def spaces() -> list:
    """The search spaces a user can pick: conf/search/<name>.yaml, but the shared settings (_shared.yaml)."""
    return sorted(entry.name[:-5] for entry in resources.files("mnist_arch.conf").joinpath("search").iterdir()
                  if entry.name.endswith(".yaml") and not entry.name.startswith("_"))


def search_help() -> str:
    """The search's own keys, read from conf/search/_shared.yaml (the file that sets them: their defaults and what
    they mean), and its spaces; the run's keys are the run's (python -m mnist_arch.run --help)."""
    folder = resources.files("mnist_arch.conf").joinpath("search")
    shared = [line for line in folder.joinpath("_shared.yaml").read_text().splitlines() if not line.startswith("#")]
    keys = [f"  search.{line}" if line[:1].isalpha() else f"         {line}" for line in shared if line.strip()]
    return "\n".join([
        "usage: python -m mnist_arch.search search=<space> [search.<key>=<value> ...] [any run override ...]",
        "",
        "An Optuna study of the space: each trial samples a net and a recipe, is judged against the budget, trains on",
        "the holdout split (data.val=test is refused) and is scored; the same command again resumes it (docs/search.md).",
        "",
        f"spaces (conf/search/): {', '.join(spaces())}",
        "",
        "each space sets:",
        "  search.study_name=<name>  # the study and its folder outputs/search/<name> (the space's name by default)",
        "  search.experiment=<name>  # the recipe every trial starts from (an experiment= option)",
        "  search.space={...}        # what is sampled (docs/search.md, \"A space\")",
        "every space shares (conf/search/_shared.yaml, with its defaults):",
        *keys,
        "",
        "Any run override (experiment=, budget.*, data.*, trainer.max_epochs=, threads=) applies to every trial; a",
        "key of the space given on the command line is fixed rather than sampled. Run keys: python -m mnist_arch.run",
        "--help.",
    ])


@hydra_command("study", help=search_help, check=check_search_keys)  # conf/study.yaml: the run's config and the study's run dir
def main(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "search") is None:
        raise ConfigError(f"pick a search space: search=<name> (conf/search/: {', '.join(spaces())})")
    optuna_module()
    study_dir = Path(HydraConfig.get().runtime.output_dir)
    _mask_passwords(study_dir / ".hydra")  # Hydra wrote the command line there: a storage URL's password goes
    conf: Config = load(HydraConfig.get().overrides.task)  # the search group, checked
    search = search_conf(conf.search)  # the search's own schema (mnist_arch/search/schema.py)
    overrides = base_overrides(search, HydraConfig.get().overrides.task)
    given = override_pairs(overrides)
    fixed = {k: v for k, v in search_space.specs(search.space).items() if k not in given}  # given: fixed
    search = replace(search, space=fixed)
    base = load(overrides)  # the trials' recipe, checked before any trial (a typo fails here, not 40 times)
    threads = base.threads or threads_each(search.workers)
    job = Job(search, study_dir, search.storage or f"sqlite:///{study_dir / 'study.db'}", overrides,
              base.trainer.max_epochs)
    study_dir.mkdir(parents=True, exist_ok=True)
    if search.race_candidates:  # designs from a file race; no study is run
        designs = race.designs_from_file(search.race_candidates)
        _race(designs, study_dir, search, overrides, threads, job)
        return
    study = open_study(job)
    if not study.trials:  # a new study starts from the known designs, if the space names any
        for point in search.start:
            study.enqueue_trial(point)
    c = counts(study)
    print(f"study {search.study_name} in {study_dir}: {c['complete'] + c['pruned']} of {search.n_trials} trials "
          f"trained; {search.workers} worker(s); pruner {pruner_name(search)}; objectives {', '.join(search.objectives)}",
          flush=True)
    try:
        run_workers(job, objective, threads)
    except KeyboardInterrupt as e:
        print(f"interrupted; the study is kept: run the same command again to go on ({study_dir})", file=sys.stderr)
        sys.exit(exit_code(e))
    fail_stale(study)  # a worker killed meanwhile leaves its trial RUNNING: fail it (and queue it again) now
    summary = summarize(study, job)
    write_atomic(study_dir / "study.json", json.dumps(summary, indent=2) + "\n")
    table = front_table(summary)
    write_atomic(study_dir / "front.md", table + "\n")
    print("\n" + printable(table))
    _plot(study_dir, search)
    if search.race:
        designs = [race.Design(f"trial{t.number}", tuple(o for o in run_overrides(t, overrides)
                                                         if not o.startswith("seed=")))
                   for t in front(study, search, best=search.race)]
        if len(designs) < 2:
            raise ConfigError(f"search.race={search.race}: the study holds {len(designs)} complete trial(s); a race "
                              "needs two")
        _race(designs, study_dir, search, overrides, threads, job)
        return
    if search.confirm:
        result = confirm(study, job, threads, base.budget.target_acc)
        write_atomic(study_dir / "confirm.md", result + "\n")
        print(f"\nconfirmed on the 60k, 10k test, final epoch ({study_dir / 'confirm.md'}):\n{printable(result)}")


def _mask_passwords(folder: Path) -> None:
    """Hydra's own copies of the command line (.hydra/*.yaml) with every URL's password masked, as the project's
    records have them: `search.storage=postgresql://user:pw@host/db` typed on the command line stays there
    otherwise (docs/slurm-and-ddp.md steers the password to PGPASSWORD or ~/.pgpass instead)."""
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() and not folder.is_symlink() else []:
        text = path.read_text()
        if redact(text) != text:
            write_atomic(path, redact(text))


def _race(designs, study_dir: Path, search: SearchConf, overrides, threads, job: Job) -> None:
    """The race (mnist_arch/search/race.py) into <study dir>/race/, race.md and race.json; then, with
    search.confirm=K, the first K survivors on the 10k test set over search.confirm_seeds."""
    race_dir = study_dir / "race"
    base = [o for o in overrides if not o.startswith(("data.val=", "seed="))]
    print(f"race of {len(designs)} designs in {race_dir}: {', '.join(d.name for d in designs)}", flush=True)
    try:
        race.run(designs, race_dir, search, base, threads)
    except KeyboardInterrupt as e:
        print(f"interrupted; the race is kept: run the same command again to go on ({race_dir})", file=sys.stderr)
        sys.exit(exit_code(e))
    standings, pending = race.standings(designs, race_dir, search)
    text = race.table(standings, pending, search)
    write_atomic(study_dir / "race.md", text + "\n")
    write_atomic(study_dir / "race.json", json.dumps(race.as_json(standings, pending), indent=2) + "\n")
    print(f"\n{printable(text)}")
    if search.confirm:
        picked = race.survivors(standings)[:search.confirm]
        result = confirm_designs([(d.name, d.name, race.merged(base, d.overrides)) for d in picked], job, threads)
        write_atomic(study_dir / "confirm.md", result + "\n")
        print(f"\nthe race's pick(s) confirmed on the 60k, 10k test, final epoch, seeds "
              f"{','.join(map(str, search.confirm_seeds))} ({study_dir / 'confirm.md'}):\n{printable(result)}")


def _plot(study_dir: Path, search: SearchConf) -> None:
    """front.png: every trained trial's val acc against the second objective (params by default)."""
    # Deferred: the leaderboard imports scipy (0.6 s), needed only once a trial has trained
    from mnist_arch.results import leaderboard

    records = leaderboard.read_records(study_dir / "trials")
    if not any(r.status == "completed" for r in records):
        return
    x = search.objectives[1] if len(search.objectives) > 1 else "params"
    differing, rows, _ = leaderboard.leaderboard(records)
    leaderboard.pareto(rows, differing, "final", x=x, label=lambda row: f"#{Path(row['run_dirs'][0]).name}"
                  ).savefig(study_dir / "front.png", dpi=100)


if __name__ == "__main__":
    main()
