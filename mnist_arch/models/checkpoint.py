"""Reading a checkpoint as data: its zip records judged before torch opens it (sizes, counts, no pickled
objects: `torch.load(weights_only=True)`), its net_spec checked, and its net rebuilt from the registry alone
(models/build.py), never from code the checkpoint names, unless the user trusts that class by name."""
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
from mnist_arch.models.build import CUSTOM, SPEC_KEYS, TRUST_ENV, build_net, is_plain, trusted_targets
from mnist_arch.models.registry import MODELS, unknown_model

MAX_RECORDS = 10_000  # records in a checkpoint's zip archive: one per tensor, a few hundred for a Lightning run's
MAX_PICKLE_BYTES = 4 * MiB  # its data.pkl (the structure around the tensors): tens of KB for a Lightning run


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
