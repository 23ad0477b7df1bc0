"""A net from its spec, or from a checkpoint alone: the one place where a config becomes a net.

A spec is the plain dict of the `model` config group: `{"name": "s4", "net": {"dropout": 0.15}}` for a
registered architecture, `{"name": "public_3762", "arch": "convnet", "net": {"stages": ...}}` for a preset
(a label for a registered constructor and its arguments), `{"name": "custom", "net": {"_target_":
"my_pkg.nets.Tiny", "width": 8}}` for any importable nn.Module class. Every checkpoint a run writes carries
its spec under `net_spec`, so `net_from_checkpoint` rebuilds the trained net from the file alone.

What is trusted. Your own config is: model=custom imports the class you name (it must be an nn.Module
class, checked before it is called, and gets plain-data arguments only). A checkpoint is data: it is read
with torch.load(weights_only=True), so it holds tensors and plain values, never pickled objects; only
registered architectures and presets are built from its spec, and a custom class it names is refused
before anything is imported, unless you name that class yourself: `--trust-target pkg.nets.Tiny` on the
command, or MNIST_ARCH_TRUST_TARGETS=pkg.nets.Tiny,other.Net in the environment.
"""
import contextlib
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Collection, Dict, Optional, Tuple, Union

import torch
from torch import nn

from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.files import MAX_CHECKPOINT_BYTES, MAX_NET_PARAMS, SAFE_NAME, MiB, check_file
from mnist_arch.locate import check_arguments, check_values, locate
from mnist_arch.models.registry import MODELS, presets, unknown_model

CUSTOM = "custom"  # model=custom: the net's class comes from model.net._target_
TRUST_ENV = "MNIST_ARCH_TRUST_TARGETS"  # comma-separated classes a checkpoint's custom spec may name
SPEC_KEYS = ("name", "arch", "net")
PLAIN = (type(None), bool, int, float, str)
MAX_RECORDS = 10_000  # records in a checkpoint's zip archive: one per tensor, a few hundred for a Lightning run's
MAX_PICKLE_BYTES = 4 * MiB  # its data.pkl (the structure around the tensors): tens of KB for a Lightning run


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


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """A checkpoint file's dict, read as data (torch.load with weights_only=True, said here rather than left
    to torch's default); BadFile, one line, for anything that is not a readable mnist_arch checkpoint."""
    check_file(path, "checkpoint", MAX_CHECKPOINT_BYTES)
    check_records(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a pickled object: say which, never load it
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise BadFile(f"{path}: refused: it holds a pickled Python object{what}, not only tensors and plain "
                      "data; checkpoints are read as data (weights_only=True)") from None
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, garbled: all one line
        first = (str(e).splitlines() or [""])[0][:200]
        raise BadFile(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BadFile(f"{path}: not an mnist_arch checkpoint (it has no state_dict of named tensors)")
    return checkpoint


def check_records(source: Union[str, Path, BinaryIO], path: Union[str, Path, None] = None) -> None:
    """A checkpoint is the zip archive torch.save writes; what its records declare they hold (what torch.load
    allocates for them) is judged before it is read: BadFile for anything else, or for more than the limits.
    torch.load's reader refuses a record that expands past its declared size. `source`: the file, or its bytes
    already read (then `path` names it in the message)."""
    path = source if path is None else path
    count, directory = zip_directory(source)
    if count is None:
        raise BadFile(f"{path}: not a checkpoint: it has no zip directory (truncated, or not the zip archive torch.save "
                      "writes)")
    if count > MAX_RECORDS or directory > MAX_RECORDS * 512:
        raise BadFile(f"{path}: a zip archive of {count:,} records ({directory:,} bytes of directory), over the "
                      f"{MAX_RECORDS:,} a checkpoint may hold")
    try:
        if not isinstance(source, (str, Path)):
            source.seek(0)
        with zipfile.ZipFile(source) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise BadFile(f"{path}: not a checkpoint: a damaged zip archive ({e})") from None
    total = sum(record.file_size for record in records)
    pickled = max((r.file_size for r in records if r.filename.endswith("data.pkl")), default=0)
    if total > MAX_CHECKPOINT_BYTES:
        raise BadFile(f"{path}: its records declare {total / MiB:,.0f} MiB, over the {MAX_CHECKPOINT_BYTES / MiB:,.0f} "
                      "MiB a checkpoint may expand to")
    if pickled > MAX_PICKLE_BYTES:
        raise BadFile(f"{path}: its data.pkl declares {pickled / MiB:,.1f} MiB, over the {MAX_PICKLE_BYTES / MiB:,.0f} "
                      "MiB a checkpoint's structure may be (its tensors are records of their own)")


def zip_directory(source: Union[str, Path, BinaryIO]) -> Tuple[Optional[int], int]:
    """(records, bytes of central directory) from a zip file's end records (zip64 where it has them), read
    before zipfile parses the directory into memory; (None, 0) when it has none (not a zip file)."""
    with (open(source, "rb") if isinstance(source, (str, Path)) else contextlib.nullcontext(source)) as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 16) - 22))  # the end record, behind a comment of up to 64 KiB
        tail = f.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or len(tail) - end < 22:
            return None, 0
        count, directory = struct.unpack("<HI", tail[end + 10: end + 16])
        locator = end - 20
        if locator >= 0 and tail[locator: locator + 4] == b"PK\x06\x07":  # zip64: the real numbers are there
            (offset,) = struct.unpack("<Q", tail[locator + 8: locator + 16])
            if offset + 56 > size:
                return None, 0
            f.seek(offset)
            record = f.read(56)
            if record[:4] != b"PK\x06\x06":
                return None, 0
            count, directory = struct.unpack("<QQ", record[32:48])
    return count, directory


def check_spec(spec: Any, path: Union[str, Path], trust: Collection[str] = ()) -> Dict[str, Any]:
    """A checkpoint's net_spec, checked before anything is imported or built: plain data, a registered
    architecture or preset, or a custom class the user trusts by name."""
    if spec is None:
        raise BadFile(f"{path}: no net_spec in this checkpoint (written before mnist_arch stored it); rebuild the "
                      "net from the run's config.yaml")
    if not (isinstance(spec, dict) and set(spec) <= set(SPEC_KEYS) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("arch"), (str, type(None))) and isinstance(spec.get("net") or {}, dict)
            and is_plain(spec)):
        raise BadFile(f"{path}: its net_spec is not a model spec (a name, an optional arch, and the net's "
                      "arguments as plain values)")
    # its name ends up in file names (export writes <run dir>/<name>.onnx)
    if not SAFE_NAME.fullmatch(spec["name"]):
        raise BadFile(f"{path}: its model name {spec['name'][:40]!r} is not a plain name (letters, digits, _ . -)")
    name = spec.get("arch") or spec["name"]
    if name == CUSTOM:
        target = (spec.get("net") or {}).get("_target_")
        if not isinstance(target, str) or target not in trusted_targets(trust):
            raise BadFile(f"{path}: its net is custom code, {target!r}, which is not imported from a checkpoint "
                          f"unless you trust it: add --trust-target {target} (or set {TRUST_ENV}={target})")
    elif name not in MODELS:
        raise BadFile(f"{path}: {unknown_model(name, CUSTOM)}")
    return spec


def check_weights(net: nn.Module, state: Dict[str, torch.Tensor], prefix: str, path: Union[str, Path],
                  name: str) -> Dict[str, torch.Tensor]:
    """The checkpoint's tensors under `prefix` (e.g. "net."), keyed as `net` keys them, if they fit `net`
    name for name and shape; BadFile naming the first that does not."""
    given = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    expected = net.state_dict()
    for key in sorted(expected.keys() | given.keys()):
        if key not in given or key not in expected:
            where = "missing from the checkpoint" if key not in given else "not in the net"
            raise BadFile(f"{path}: its weights do not fit {name} as built now ({key}: {where})")
        if tuple(given[key].shape) != tuple(expected[key].shape):
            raise BadFile(f"{path}: its weights do not fit {name} as built now ({key}: shape "
                          f"{tuple(given[key].shape)} in the checkpoint, {tuple(expected[key].shape)} in the net)")
    return given


def sized_net(spec: Dict[str, Any]) -> nn.Module:
    """The spec's net on the meta device: shapes without storage, so a spec asking for a 14 GB net costs
    nothing. A custom class you trusted by name that cannot be built there is built as it is."""
    try:
        with torch.device("meta"):
            return build_net(spec)
    except (RuntimeError, NotImplementedError):
        if (spec.get("arch") or spec["name"]) != CUSTOM:
            raise
        return build_net(spec)


def net_from_checkpoint(path: Union[str, Path], trust: Collection[str] = ()) -> Tuple[nn.Module, Dict[str, Any]]:
    """(the trained net in eval mode, the checkpoint dict), from a run's .ckpt file and nothing else.
    `trust`: custom classes the user allows this checkpoint to name (see the module's docstring)."""
    checkpoint = read_checkpoint(path)
    spec = check_spec(checkpoint.get("net_spec"), path, trust)
    try:
        sized = sized_net(spec)
        params = sum(t.numel() for t in sized.state_dict().values())
        if params > MAX_NET_PARAMS:
            raise BadFile(f"{path}: its net_spec builds a net of {params:,} parameters and buffers, over the "
                          f"{MAX_NET_PARAMS:,} a net from a checkpoint may have")
        weights = check_weights(sized, checkpoint["state_dict"], "net.", path, spec["name"])  # before any allocation
        net = build_net(spec)
    except ConfigError as e:
        if isinstance(e, BadFile):
            raise
        raise BadFile(f"{path}: its net_spec cannot be built: {e}") from None
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as e:  # e.g. a tensor of a dtype the parameter cannot take
        raise BadFile(f"{path}: its weights do not load into {spec['name']} ({str(e).splitlines()[-1].strip()})") \
            from None
    return net.eval(), checkpoint
