"""A net from its spec: the one place where a config becomes a net (a checkpoint's, read as data, in
models/checkpoint.py).

A spec is the plain dict of the `model` config group: `{"name": "s4", "net": {"dropout": 0.15}}` for a
registered architecture, `{"name": "public_3762", "arch": "convnet", "net": {"stages": ...}}` for a preset
(a label for a registered constructor and its arguments), `{"name": "custom", "net": {"_target_":
"my_pkg.nets.Tiny", "width": 8}}` for any importable nn.Module class. Every checkpoint a run writes carries
its spec under `net_spec`, so `net_from_checkpoint` (models/checkpoint.py) rebuilds the trained net from
the file alone.

What is trusted. Your own config is: model=custom imports the class you name (it must be an nn.Module
class, checked before it is called, and gets plain-data arguments only). A checkpoint is data: it is read
with torch.load(weights_only=True), so it holds tensors and plain values, never pickled objects; only
registered architectures and presets are built from its spec, and a custom class it names is refused
before anything is imported, unless you name that class yourself: `--trust-target pkg.nets.Tiny` on the
command, or MNIST_ARCH_TRUST_TARGETS=pkg.nets.Tiny,other.Net in the environment.
"""
import os
from typing import Any, Collection, Dict

from torch import nn

from mnist_arch.errors import ConfigError
from mnist_arch.locate import check_arguments, check_values, locate
from mnist_arch.models.registry import MODELS, presets, unknown_model

CUSTOM = "custom"  # model=custom: the net's class comes from model.net._target_
TRUST_ENV = "MNIST_ARCH_TRUST_TARGETS"  # comma-separated classes a checkpoint's custom spec may name
SPEC_KEYS = ("name", "arch", "net")
PLAIN = (type(None), bool, int, float, str)


def build_net(spec: Dict[str, Any]) -> nn.Module:
    """The spec's net, freshly initialised; a bad name, class path or argument is a ConfigError. A preset's name
    alone ({"name": "frontier_4k"}) builds the preset, with any `net` arguments given over its own."""
    if not spec.get("arch") and spec["name"] in presets():
        preset = presets()[spec["name"]]
        spec = {**preset, "net": {**preset["net"], **dict(spec.get("net") or {})}}
    name, kwargs = spec.get("arch") or spec["name"], dict(spec.get("net") or {})
    if name == CUSTOM:
        target = kwargs.pop("_target_", None)
        make, owner = locate(target, "model.net._target_", base=nn.Module), target  # a function is refused
    elif name in MODELS:
        make, owner = MODELS[name], f"model {name}"
    else:
        raise ConfigError(unknown_model(name, CUSTOM))
    bad = next((key for key, value in kwargs.items() if not is_plain(value)), None)
    if bad is not None:
        raise ConfigError(f"model.net.{bad}: a net's arguments are plain values (numbers, strings, lists), "
                          f"not {type(kwargs[bad]).__name__}")
    check_arguments("model.net.", make, kwargs, owner)
    check_values("model.net.", make, kwargs)
    try:
        return make(**kwargs)
    except ValueError as e:  # a registered net refusing its arguments says why (e.g. convnet's shapes)
        if name != CUSTOM:
            raise ConfigError(str(e)) from e
        raise ConfigError(f"model.net._target_={owner} could not be built: {type(e).__name__}: {e}") from e
    except (TypeError, IndexError, KeyError) as e:  # a value of a shape the annotations do not say (a nested list)
        what = f"model {name}" if name != CUSTOM else f"model.net._target_={owner}"
        raise ConfigError(f"{what} could not be built from model.net={kwargs}: {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]}") from e
    except Exception as e:  # noqa: BLE001 - a user's constructor failing is a config error, said in one line
        if name != CUSTOM:
            raise
        raise ConfigError(f"model.net._target_={owner} could not be built: {type(e).__name__}: {e}") from e


def is_plain(value: Any, depth: int = 0) -> bool:
    """Numbers, strings, booleans, None, and lists / dicts of them (a config's values, nothing callable)."""
    if depth > 10:
        return False
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v, depth + 1) for k, v in value.items())
    return False


def names_code(value: Any, depth: int = 0) -> bool:
    """Whether a config value holds a `_target_` key at any depth (what hydra.utils.instantiate would build)."""
    if depth > 20:
        return True
    if isinstance(value, dict):
        return "_target_" in value or any(names_code(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(names_code(v, depth + 1) for v in value)
    return False


# --- checkpoints: files from elsewhere ------------------------------------------------------------


def trusted_targets(given: Collection[str] = ()) -> set:
    """The custom classes the user named: on the command line (`given`) and in MNIST_ARCH_TRUST_TARGETS."""
    return {*given, *(t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip())}
