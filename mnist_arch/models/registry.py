"""A name → constructor registry, so configs and tests can reach every architecture by name."""
from typing import Callable, Dict, List

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


def list_models() -> List[str]:
    return sorted(MODELS)


def unknown_model(name: object, *also: str) -> str:
    """The one message for a model name that nothing builds; `also`: names accepted besides the registry's."""
    return f"unknown model {name!r}; available: {', '.join([*list_models(), *also])}"
