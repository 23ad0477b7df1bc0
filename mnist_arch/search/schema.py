"""The search's settings, `search.*` (conf/search/<space>.yaml on conf/search/_shared.yaml): typed and checked here,
by the search command, when a study starts; a run's config carries the group untyped and ignores it."""
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_arch.config.schema import check, check_mapping, one_of, refuse_unknown
from mnist_arch.errors import ConfigError
from mnist_arch.search import space

OBJECTIVES = ("val_acc", "params", "macs", "train_seconds")  # val_acc is maximised, the others minimised
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("auto", "median", "percentile", "hyperband", "none")


@dataclass
class SearchConf:
    """`python -m mnist_arch.search search=<space>`: a study of the space (mnist_arch/commands/search.py). The values
    live in conf/search/; a run ignores this group."""

    study_name: str = MISSING  # the study, and its folder outputs/search/<study_name>
    experiment: Optional[str] = MISSING  # the recipe every trial starts from (an experiment= option)
    space: Dict[str, Any] = MISSING  # what is sampled (mnist_arch/search/space.py)
    objectives: List[str] = MISSING  # [val_acc], or [val_acc, params | macs | train_seconds]
    n_trials: int = MISSING  # trained trials (complete or pruned) the study should hold; infeasible ones do not count
    workers: int = MISSING  # processes on this machine, the CPU threads split between them
    storage: Optional[str] = MISSING  # an Optuna storage URL; null: SQLite in the study folder
    sampler: str = MISSING
    pruner: str = MISSING
    pruner_warmup_epochs: int = MISSING  # epochs every trial trains before the pruner may stop it
    pruner_percentile: float = MISSING  # pruner=percentile: the top share kept each epoch (75: bottom quarter stopped)
    seed: int = MISSING  # the sampler's
    confirm: int = MISSING  # afterwards, retrain the top K (two objectives: up to K of the front) on the 60k
    confirm_seeds: List[int] = MISSING
    start: List[Dict[str, Any]] = MISSING  # trials a new study runs first (Optuna's enqueue_trial): known designs
    race: int = MISSING  # afterwards: race the study's N best trials on the validation side (search/race.py)
    race_candidates: Optional[str] = MISSING  # or race these designs (a YAML list of {name, overrides}), no study run
    race_rounds: int = MISSING  # at most this many rounds: each survivor gets one more seed (or fold) a round
    race_val: str = MISSING  # holdout (round r: seed r) | fold (round r: fold r-1 of race_folds)
    race_folds: int = MISSING
    race_min_rounds: int = MISSING  # rounds before the first drop
    race_alpha: float = MISSING  # a design is dropped when the leader beats it at this level (Holm-adjusted)

    def __post_init__(self):
        check(bool(self.objectives) and self.objectives[0] == "val_acc" and len(self.objectives) <= 2
               and all(o in OBJECTIVES for o in self.objectives),
               f"search.objectives={list(self.objectives)}: [val_acc], or val_acc and one of "
               f"{', '.join(OBJECTIVES[1:])}")
        one_of("search.sampler", self.sampler, SAMPLERS)
        one_of("search.pruner", self.pruner, PRUNERS)
        check(len(self.objectives) == 1 or self.pruner in ("auto", "none"),
               f"search.pruner={self.pruner} needs one objective: Optuna's pruners judge one value per epoch "
               "(Trial.report is single-objective); use search.pruner=none with two")
        for key in ("n_trials", "workers"):
            check(getattr(self, key) >= 1, f"search.{key}={getattr(self, key)} must be >= 1")
        check(self.pruner_warmup_epochs >= 0, f"search.pruner_warmup_epochs={self.pruner_warmup_epochs} must be >= 0")
        check(0 < self.pruner_percentile < 100,
               f"search.pruner_percentile={self.pruner_percentile} must be in (0, 100)")
        check(self.confirm >= 0 and bool(self.confirm_seeds),
               f"search.confirm={self.confirm} must be >= 0 and search.confirm_seeds a non-empty list")
        check(self.race >= 0, f"search.race={self.race} must be >= 0 (0: no race)")
        check(self.race != 1, "search.race=1 races one design against nobody: give 2 or more")
        one_of("search.race_val", self.race_val, ("holdout", "fold"))
        check(2 <= self.race_min_rounds <= self.race_rounds,
               f"search.race_min_rounds={self.race_min_rounds} must be at least 2 (one seed says nothing of seed "
               f"noise) and at most search.race_rounds={self.race_rounds}")
        check(self.race_val != "fold" or self.race_rounds <= self.race_folds,
               f"search.race_rounds={self.race_rounds}: a fold race has one round per fold, "
               f"search.race_folds={self.race_folds}")
        check(0 < self.race_alpha < 1, f"search.race_alpha={self.race_alpha} must be in (0, 1)")
        if self.race or self.race_candidates:  # a confirm must be held out: no seed the race selected with
            used = set(range(1, self.race_rounds + 1)) if self.race_val == "holdout" else {1}
            shared = sorted(used & set(self.confirm_seeds))
            check(not shared, f"search.confirm_seeds share seed(s) {shared} with the race (seeds "
                               f"{sorted(used)}): a confirm on them is not held out; e.g. search.confirm_seeds=[6,7,8,9,10]")
        check_mapping("search.space", self.space)
        check(isinstance(self.start, list), f"search.start must be a list of trials, not {self.start!r}")
        for i, trial in enumerate(self.start):
            check_mapping(f"search.start[{i}]", trial)
        space.check(self.space)


def search_conf(group: Any) -> SearchConf:
    """The composed `search` group as SearchConf: an unknown key is one line with a "did you mean", a value of the
    wrong type one line naming its key, then SearchConf's own checks."""
    if isinstance(group, SearchConf):
        return group
    node = group if isinstance(group, DictConfig) else OmegaConf.create(group)
    check_search_keys(f"search.{key}" for key in node)
    schema = OmegaConf.structured(SearchConf)
    for key in node:  # key by key, so that the line names the key (a list element's error names only its index)
        try:
            OmegaConf.merge(schema, {key: node[key]})
        except OmegaConfBaseException as e:
            raise ConfigError(f"search.{key}: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(OmegaConf.merge(schema, node))


def check_search_keys(keys) -> None:
    """Each `search.<key>` of `keys` (a command line's override keys) names a key of SearchConf, or is one line with
    a "did you mean": the run's config carries the group untyped, so Hydra would only say it is not in struct."""
    known = [f.name for f in dataclasses.fields(SearchConf)]
    for key in keys:
        if key.startswith("search."):
            refuse_unknown("search.", [key.split(".")[1]], known, "the search group")
