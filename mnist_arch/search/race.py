"""A race before the test set: finalists trained again on the validation side only, one more seed (or fold)
each round, the ones the data show worse than the leader dropped, until one is left or the rounds are spent.

    python -m mnist_arch.search search=8k search.race=5                          # the study's 5 best trials
    python -m mnist_arch.search search=8k search.race_candidates=finalists.yaml  # any designs, no study run
    python -m mnist_arch.search search=8k search.race=5 search.confirm=1         # then the winner on the test set

Round r gives every survivor seed r on the holdout (search.race_val=holdout) or fold r-1 of
search.race_folds (race_val=fold, seed 1). From round search.race_min_rounds on, the leader (the best mean
val acc) is compared with each other survivor by the paired test of mnist_arch/results/compare.py over every
round so far (the same images and seeds; folds as clusters); those it beats at the race's level, Holm-adjusted,
are dropped. The level is not search.race_alpha itself: a race looks once a round and its leader is the data's
pick, so the level is the one that keeps a race of equal designs from dropping one in more than race_alpha of
races (compare.race_level, by simulation). The test set is never read: the runs do not test (train(test=False)), and the confirm that may
follow uses search.confirm_seeds, which may not share a seed with the race.

Resumable and shared like the study: each run is a run dir, race/<design>/round<r>/, claimed by one worker
under the study's lock (mnist_arch/search/claims.py: a file lock, or the database's with a PostgreSQL storage;
search.workers processes, or Slurm jobs running the same command on a shared disk); a
completed run is never run again, and a run cut short resumes from its last completed epoch
(ckpt_path=last). race.md says, for each design, the rounds it survived, its mean, 95% CI, and why it was
dropped, and names the designs the race could not separate.
"""
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from mnist_arch.config.compose import compose, override_pairs
from mnist_arch.config.foreign import check_foreign
from mnist_arch.config.schema import ConfigError
from mnist_arch.errors import BadFile
from mnist_arch.files import SAFE_NAME, check_file
from mnist_arch.results.record import RunRecord
from mnist_arch.search.claims import Claims, patient
from mnist_arch.search.schema import SearchConf
from mnist_arch.search.study import in_processes, quiet_worker, stop_if_interrupted

LOCK = ".race.lock"
RACE_OVERRIDES = ["callbacks.stop_at_target=false", "trainer.enable_progress_bar=false"]  # every epoch is run


@dataclass(frozen=True)
class Design:
    name: str  # the folder race/<name>/ and the row of race.md
    overrides: Tuple[str, ...]  # what makes it this design: an experiment and its overrides


def designs_from_file(path: str) -> List[Design]:
    """A YAML list of {name, overrides: [...]}: designs that need not be trials of one study. The file is data:
    its overrides set values only (mnist_arch/config/foreign.py)."""
    file = Path(path).expanduser()
    check_file(file, "race candidates file", 1 << 20)
    try:
        entries = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BadFile(f"{file}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(entries, list) or len(entries) < 2:
        raise ConfigError(f"{file}: a race needs a list of two designs or more, each {{name: ..., overrides: [...]}}")
    designs = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and set(entry) == {"name", "overrides"} and isinstance(entry["name"], str)
                and SAFE_NAME.fullmatch(entry["name"]) and isinstance(entry["overrides"], list)
                and all(isinstance(o, str) for o in entry["overrides"])):
            raise ConfigError(f"{file}: entry {i} must be {{name: <letters, digits, ._->, overrides: [<key=value>, "
                              f"...]}}, not {str(entry)[:80]}")
        designs.append(Design(entry["name"], tuple(check_foreign(entry["overrides"], f"{file}: {entry['name']}"))))
    names = [d.name for d in designs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: two designs share a name ({', '.join(sorted(n for n in names if names.count(n) > 1))})")
    return designs


def merged(base: Sequence[str], own: Sequence[str]) -> List[str]:
    """`base` then a design's `own` overrides, a key given by both taken from `own` (Hydra refuses a group chosen
    twice: a design may name its own experiment)."""
    keys = set(override_pairs(own))
    return [*(o for o in base if o.lstrip("+~").partition("=")[0] not in keys), *own]


def unit(search: SearchConf, round_: int) -> List[str]:
    """What round r adds to every design: its seed on the holdout, or its fold."""
    if search.race_val == "fold":
        return ["seed=1", "data.val=fold", f"data.folds={search.race_folds}", f"data.fold={round_ - 1}"]
    return [f"seed={round_}", "data.val=holdout"]


def run_dir(race_dir: Path, design: Design, round_: int) -> Path:
    return race_dir / design.name / f"round{round_}"


# --- the state of a race, read from its run dirs ---------------------------------------------------------


@dataclass
class Standing:
    design: Design
    records: List[RunRecord]
    dropped: Optional[str] = None  # why, and in which round
    mean: Optional[float] = None
    ci: Optional[Tuple[float, float]] = None


def standings(designs: Sequence[Design], race_dir: Path, search: SearchConf) -> Tuple[List[Standing], int]:
    """Replay the race from what its run dirs hold: (each design's standing, the round whose runs are still
    missing, or 0 when the race is over). Deterministic: every worker and every resume reaches the same drops."""
    table = [Standing(d, []) for d in designs]
    for round_ in range(1, search.race_rounds + 1):
        alive = [s for s in table if s.dropped is None]
        if len(alive) < 2:
            return table, 0
        records = [RunRecord.read(run_dir(race_dir, s.design, round_)) for s in alive]
        if any(r.status != "completed" for r in records):
            return table, round_
        for s, r in zip(alive, records):
            s.records.append(r)
        _judge(alive, round_, search, len(designs))
    return table, 0


def _judge(alive: List[Standing], round_: int, search: SearchConf, designs: int) -> None:
    """Means and CIs; from race_min_rounds on, drop those the leader beats: each comparison at the level that keeps
    a race of `designs` equal designs from dropping one in more than search.race_alpha of races, over its looks
    and its data-chosen leader (compare.race_level), Holm over the round's comparisons."""
    from mnist_arch.results import compare  # deferred: scipy (0.6 s), only once a race judges

    tested = {}
    for s in alive:
        runs, tested[s.design.name], unread, left_out = compare.pooled_and_separate(s.records, partial_folds=True)
        problems = unread + left_out
        if problems or not runs:  # shown pooled; tested each fold on its own (clusters)
            raise BadFile(f"race: {s.design.name}: " + "; ".join(problems or ["no predictions kept"]))
        correct = compare.stack(runs)
        s.mean, s.ci = float(correct.mean()), compare.interval(correct)
    if round_ < search.race_min_rounds:
        return
    level = compare.race_level(designs, search.race_rounds, search.race_min_rounds, search.race_alpha)
    leader, dropped = compare.race_drops(tested, level)
    for s in alive:
        if s.design.name in dropped:
            result, threshold = dropped[s.design.name]
            s.dropped = (f"round {round_}: worse than {leader} by {100 * result.difference:.3f} points (95% CI "
                         f"{100 * result.ci_low:.3f} to {100 * result.ci_high:.3f}, p = {result.p:.3g} < {threshold:.3g}: "
                         f"the race's level {level:.3g}, Holm over {len(alive) - 1} comparisons)")


# --- running it: workers claim runs under a lock ----------------------------------------------------------


def _next_run(designs: Sequence[Design], race_dir: Path, search: SearchConf,
              claims: Claims) -> Tuple[Optional[Tuple[Design, int]], bool]:
    """Under the lock: (a run to train now, claimed; whether the race is over)."""
    table, round_ = standings(designs, race_dir, search)
    if not round_:
        return None, True
    for s in table:
        if s.dropped is None:
            path = run_dir(race_dir, s.design, round_)
            if RunRecord.read(path).status != "completed" and not claims.claimed(path):
                claims.claim(path)
                return (s.design, round_), False
    return None, False


def train_claimed(path: Path, overrides: Sequence[str], threads: Optional[int], what: str, claims: Claims,
                  test: bool = True, here: Sequence[str] = ()) -> Tuple[RunRecord, float]:
    """Train the run dir this process claimed (resuming a run cut short from its last epoch), its claim kept
    fresh while it trains and let go after; (its record, seconds). One that does not complete is a
    ConfigError naming `what` and the dir. `here`: overrides for this process only, not recorded."""
    # Deferred: Lightning (2.8 s past the search command's imports), paid by the processes that train
    from mnist_arch.train.job import train

    resume = ["ckpt_path=last"] if (path / "checkpoints" / "last.ckpt").exists() else []
    started = time.perf_counter()
    try:
        cfg = compose([*overrides, *here, *resume, *([f"threads={threads}"] if threads else [])])
        with claims.heartbeat(path):
            record = train(cfg, path, list(overrides), test=test)
    finally:
        claims.release(path)
    stop_if_interrupted(record)
    if record.status != "completed":
        raise ConfigError(f"{what} did not complete ({record.status}: {record.error}); its run dir: {path}")
    return record, time.perf_counter() - started


def work(designs: Sequence[Design], race_dir: Path, search: SearchConf, base: Sequence[str],
         threads: Optional[int] = None, worker: int = 0) -> None:
    """One worker: claim a run, train it (resuming a run cut short), until the race is over."""
    quiet_worker()
    race_dir.mkdir(parents=True, exist_ok=True)
    claims = Claims.of(search.storage, race_dir.parent)
    def next_run():
        with claims.locked(LOCK):
            return _next_run(designs, race_dir, search, claims)

    while True:
        taken, over = patient(next_run, search.storage)
        if over:
            return
        if taken is None:  # this round's other runs are with other workers
            time.sleep(5)
            continue
        design, round_ = taken
        path = run_dir(race_dir, design, round_)
        overrides = merged(merged(base, design.overrides), [*unit(search, round_), *RACE_OVERRIDES])
        record, seconds = train_claimed(path, overrides, threads, f"race: {design.name} round {round_}", claims,
                                        test=False)
        print(f"race round {round_}: {design.name} completed, final val acc {record.final_val_acc:.4f} "
              f"({seconds:.0f} s; worker {worker})", flush=True)


def run(designs: Sequence[Design], race_dir: Path, search: SearchConf, base: Sequence[str],
        threads: Optional[int]) -> None:
    """search.workers processes here (one: this process), each taking the race's runs as they come."""
    if search.workers == 1:
        return work(designs, race_dir, search, base, threads)
    failed = in_processes(work, [(designs, race_dir, search, base, threads, i) for i in range(search.workers)])
    if failed:
        raise ConfigError(f"race: {failed} worker(s) failed (see above); run the same "
                          "command again to go on")


# --- what it found ---------------------------------------------------------------------------------------


# Each takes what standings() replayed once: the replay reads every run dir and tests every round.


def _level(standings_: List[Standing], search: SearchConf) -> float:
    from mnist_arch.results import compare  # deferred: scipy (0.6 s), only once a race judges

    return compare.race_level(len(standings_), search.race_rounds, search.race_min_rounds, search.race_alpha)


def survivors(standings_: List[Standing]) -> List[Design]:
    """The designs still in, best mean first."""
    return [s.design for s in sorted((s for s in standings_ if s.dropped is None), key=lambda s: -(s.mean or 0))]


def table(standings_: List[Standing], pending: int, search: SearchConf) -> str:
    """race.md: each design's rounds, mean, CI and fate; what the race could not separate; what it cost."""
    what = (f"seeds 1..{search.race_rounds} on the holdout" if search.race_val == "holdout" else
            f"folds 0..{search.race_rounds - 1} of {search.race_folds} (seed 1)")
    lines = [f"Race of {len(standings_)} designs on the validation side ({what}; final-epoch val acc; the test set "
             "never read). Mean and 95% CI over every round each design ran: seeds and images as crossed random "
             f"effects (docs/selection.md). Each comparison at level {_level(standings_, search):.3g}: an equal "
             f"design is dropped in at most {search.race_alpha:g} of races.", "",
             "| design | rounds | final val acc (mean) | 95% CI | result | train s |", "|---|---:|---:|---|---|---:|"]
    ranked = sorted(standings_, key=lambda s: (s.dropped is not None, -(s.mean or 0)))
    for s in ranked:
        seconds = sum(sum(r.epoch_time_s) for r in s.records)
        ci = f"{s.ci[0]:.2%} to {s.ci[1]:.2%}" if s.ci else "-"
        mean = f"{s.mean:.2%}" if s.mean is not None else "-"
        lines.append(f"| {s.design.name} | {len(s.records)} | {mean} | {ci} | {s.dropped or 'in'} | {seconds:,.1f} |")
    alive = [s.design.name for s in ranked if s.dropped is None]
    if pending:
        lines.append(f"\nRound {pending} is still running: run the same command again to go on.")
    elif len(alive) == 1:
        lines.append(f"\nThe race picked {alive[0]}: every other design was shown worse.")
    else:
        lines.append(f"\nAfter {search.race_rounds} rounds the race could not separate: {', '.join(alive)} "
                     f"({alive[0]} leads on the mean, which alone does not separate them).")
    total = sum(sum(r.epoch_time_s) for s in standings_ for r in s.records)
    runs = sum(len(s.records) for s in standings_)
    lines.append(f"Cost: {runs} runs, {total:,.1f} s of training (train + val epochs, as measured by each run).")
    return "\n".join(lines)


def as_json(standings_: List[Standing], pending: int) -> Dict:
    return {"pending_round": pending or None, "designs": [
        {"name": s.design.name, "overrides": list(s.design.overrides), "rounds": len(s.records), "mean": s.mean,
         "ci": list(s.ci) if s.ci else None, "dropped": s.dropped,
         "train_seconds": sum(sum(r.epoch_time_s) for r in s.records)} for s in standings_]}
