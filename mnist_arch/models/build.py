"""A net from its spec, or from a checkpoint alone: the one place where a config becomes a net.

A spec is the plain dict of the `model` config group: `{"name": "s4", "net": {"dropout": 0.15}}` for a
registered architecture, `{"name": "public_3762", "arch": "convnet", "net": {"stages": ...}}` for a preset
(a label for a registered constructor and its arguments), `{"name": "custom", "net": {"_target_":
"my_pkg.nets.Tiny", "width": 8}}` for any importable nn.Module. Every checkpoint a run writes carries its spec under `net_spec`, so
`net_from_checkpoint` rebuilds the trained net from the file alone, loaded with `weights_only=True`.
"""
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from mnist_arch.errors import ConfigError
from mnist_arch.models.registry import MODELS, list_models
from mnist_arch.targets import check_arguments, locate

CUSTOM = "custom"  # model=custom: the net's class comes from model.net._target_


def build_net(spec: Dict[str, Any]) -> nn.Module:
    """The spec's net, freshly initialised; a bad name, class path or argument is a ConfigError."""
    name, kwargs = spec.get("arch") or spec["name"], dict(spec.get("net") or {})
    if name == CUSTOM:
        target = kwargs.pop("_target_", None)
        make, owner = locate(target, "model.net._target_"), target
    elif name in MODELS:
        make, owner = MODELS[name], f"model {name}"
    else:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join([*list_models(), CUSTOM])}")
    check_arguments("model.net.", make, kwargs, owner)
    try:
        return make(**kwargs)
    except ValueError as e:  # a registered net refusing its arguments says why (e.g. convnet's shapes)
        if name != CUSTOM:
            raise ConfigError(str(e)) from e
        raise ConfigError(f"model.net._target_={target} could not be built: {type(e).__name__}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a user's constructor failing is a config error, said in one line
        if name != CUSTOM:
            raise
        raise ConfigError(f"model.net._target_={target} could not be built: {type(e).__name__}: {e}") from e


def net_from_checkpoint(path: Union[str, Path]) -> Tuple[nn.Module, Dict[str, Any]]:
    """(the trained net in eval mode, the checkpoint dict), from a run's .ckpt file and nothing else."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:  # missing file, not a torch file, truncated
        raise ConfigError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    spec = checkpoint.get("net_spec")
    if spec is None:
        raise ConfigError(f"{path}: no net_spec in this checkpoint (written before mnist_arch stored it); "
                          "rebuild the net from the run's config.yaml")
    net = build_net(spec)
    state = {key[len("net."):]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:  # the architecture changed since the checkpoint was written
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"{path}: its weights do not fit {spec['name']} as built now ({first})") from e
    return net.eval(), checkpoint
