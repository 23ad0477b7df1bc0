"""A name → constructor registry, so configs and tests can reach every architecture by name, and the presets
(conf/model/<preset>.yaml: a registered architecture with its arguments) listed beside them, as timm lists its
pretrained configurations beside its model functions."""
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Dict, List

from omegaconf import OmegaConf
from torch import nn

MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: make `fn` (a class or factory returning an nn.Module) buildable as `name`."""

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = fn
        return fn

    return add


def list_architectures() -> List[str]:
    """The registered constructors: what a preset's `arch` may name."""
    return sorted(MODELS)


def list_models() -> List[str]:
    """Every net a user can name: the registered architectures and the presets of conf/model."""
    return sorted({*MODELS, *presets()})


@lru_cache(maxsize=None)
def presets() -> Dict[str, Dict[str, Any]]:
    """name -> model spec ({"name", "arch", "net"}) of every conf/model/<name>.yaml that comes to an `arch`: the
    files its defaults list names merged under it, as Hydra merges them (`defaults: [frontier_20k, _self_]`).
    The config files are the one place a preset is written; this reads them, it does not repeat them."""
    folder = resources.files("mnist_arch.conf").joinpath("model")

    def config_of(name: str):
        own = OmegaConf.create(folder.joinpath(f"{name}.yaml").read_text())
        bases = [entry for entry in own.get("defaults", []) if entry != "_self_"]
        return OmegaConf.merge(*[config_of(base) for base in bases], {k: v for k, v in own.items() if k != "defaults"})

    found: Dict[str, Dict[str, Any]] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            spec = OmegaConf.to_container(config_of(entry.name[: -len(".yaml")]), resolve=True)
            if spec.get("arch"):
                found[spec["name"]] = {"name": spec["name"], "arch": spec["arch"], "net": dict(spec.get("net") or {})}
    return found


def unknown_model(name: object, *also: str) -> str:
    """The one message for a model name that nothing builds; `also`: names accepted besides the registry's."""
    return f"unknown model {name!r}; available: {', '.join([*list_models(), *also])}"
