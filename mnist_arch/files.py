"""Files someone hands a command are data. Before one is read it must be a regular file (not a folder, a
FIFO or a device, which could block or never end) of a size under its kind's limit, or it is refused in
one line (errors.BadFile) before any memory is spent on it. The limits, stated once (README, "What is
trusted"):
"""
import os
import stat
from pathlib import Path
from typing import Union

from mnist_arch.errors import BadFile

MiB = 1 << 20
MAX_CHECKPOINT_BYTES = 1024 * MiB  # a checkpoint (.ckpt); a 20k-parameter net's is about 0.3 MB
MAX_PICTURE_BYTES = 256 * MiB  # a picture file (PNG, JPEG, ...)
MAX_PICTURE_PIXELS = 50_000_000  # decoded size of a picture, read from its header first (a 48 MP photo fits)
MAX_DIGITS = 100_000  # images in one .npy or IDX file (the 60k training set fits)
MAX_ARRAY_BYTES = 1024 * MiB  # an .npy or IDX file (or what a .gz one decompresses to)
MAX_RECORD_BYTES = 16 * MiB  # a summary.json
MAX_CONFIG_BYTES = 1 * MiB  # a run dir's config.yaml


def check_file(path: Union[str, Path], what: str, max_bytes: int) -> int:
    """The size of `path`, a regular non-empty file of at most `max_bytes`; BadFile otherwise. `what` names
    the kind of file for the message ("checkpoint", "picture")."""
    try:
        info = os.stat(path)  # follows a symlink to what it points at
    except FileNotFoundError:
        raise BadFile(f"{path}: no such file") from None
    except OSError as e:
        raise BadFile(f"{path}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise BadFile(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise BadFile(f"{path}: not a regular file (a FIFO, socket or device); a {what} must be a plain file")
    if info.st_size == 0:
        raise BadFile(f"{path}: is empty, not a {what}")
    if info.st_size > max_bytes:
        raise BadFile(f"{path}: {info.st_size / MiB:,.1f} MiB, over the {max_bytes / MiB:,.0f} MiB a {what} may be")
    if not os.access(path, os.R_OK):
        raise BadFile(f"{path}: no permission to read it")
    return info.st_size
