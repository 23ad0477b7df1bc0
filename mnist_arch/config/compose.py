"""Composing the run's config outside a Hydra job, and what Hydra's configs call: the schema registered as
the first default of conf/config.yaml, the run dir's resolvers (`${run_stamp:}`, `${folder_name:<key>}`).
The schema itself, and its one gate (validate), are mnist_arch/config/schema.py."""
import os
from datetime import datetime
from typing import Dict, Optional, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from mnist_arch.cli import check_groups_chosen, hydra_error, override_keys
from mnist_arch.config.schema import Config, validate
from mnist_arch.errors import ConfigError, RunError
from mnist_arch.files import folder_name


def run_stamp() -> str:
    """The run dir's time stamp (HH-MM-SS), or `slurm-<job id>` inside a Slurm job: the tasks of one
    multi-task job (srun -n 2, DDP) start at slightly different times and must share one run dir."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else datetime.now().strftime("%H-%M-%S")


def folder_of(key: str, _root_: DictConfig) -> str:
    """`${folder_name:model.name}` in a run dir's path: the key's value, refused (one line, before Hydra makes
    the folder) when it would leave its parent folder (`search.study_name=../../x`). null: "none"."""
    value = OmegaConf.select(_root_, key, default=None)
    return folder_name("none" if value is None else str(value), key)


def register_schema() -> None:
    """Make the schema the first default of `conf/config.yaml`, so every merge is type-checked; and the
    run dir's `${run_stamp:}` and `${folder_name:<key>}`."""
    ConfigStore.instance().store(name="schema", node=Config)
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("folder_name"):
        OmegaConf.register_new_resolver("folder_name", folder_of)


def load(overrides=()) -> Config:
    """The validated config `python -m mnist_arch.run <overrides>` would train with, composed outside a Hydra
    job (the layer table, evaluate). Anything Hydra cannot parse or merge is a ConfigError in one line, as is
    any value the schema refuses."""
    check_groups_chosen(override_keys(overrides))
    try:
        return validate(compose(overrides))
    except (RunError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - Hydra's and OmegaConf's errors become ours; anything else is a bug
        line = hydra_error(e)
        if line is None:
            raise
        raise ConfigError(line) from None


def override_pairs(overrides: Sequence[str]) -> Dict[str, Optional[str]]:
    """{key: value as typed} of Hydra overrides, a `+`/`++`/`~` prefix dropped; a deletion (`~key`) is None.
    The one place an override is split, for what a record or a command line is read back for."""
    pairs: Dict[str, Optional[str]] = {}
    for override in overrides:
        key, equals, value = override.lstrip("+~").partition("=")
        pairs[key] = value if equals else None
    return pairs


def compose(overrides=(), with_hydra: bool = False) -> DictConfig:
    """The config `python -m mnist_arch.run <overrides>` would see, composed outside a Hydra job (the
    layer table, benchmarks, tests). `with_hydra` keeps the `hydra` node (launcher, sweeper, callbacks)."""
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="mnist_arch.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)
