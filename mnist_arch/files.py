"""Files someone hands a command are data, and folders someone hands a command are not ours to write through.

Reading: before a file is read it must be a regular file (not a folder, a FIFO or a device, which could
block or never end) of a size under its kind's limit, or it is refused in one line (errors.BadFile)
before any memory is spent on it. What a file expands to is limited too, and judged from its header
before the expansion: an IDX or .npy header's shape, a picture's width x height, a checkpoint's declared
record sizes, a net's parameter count from its spec. Each limit is set from what the commands need, so
that any file, accepted or refused, costs at most a few hundred MB (docs/trust.md, "Limits").

Writing: `replacing` / `write_atomic` write beside the target and rename over it. A rename replaces the
path itself, so a symlink planted where a command writes (a run dir from elsewhere whose evaluate.json
points at ~/.bashrc) is replaced, never followed; and a reader never sees half a file. Not every writer can
rename (Hydra's own .hydra/*.yaml and run.log, Lightning's checkpoints and event files), so a run refuses to
start in a folder that holds a link anywhere it writes (`refuse_links`, called by a Hydra callback before
Hydra writes a byte: mnist_arch/train/hydra_callbacks.py, `NoLinksInRunDir`).
"""
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Union

from mnist_arch.errors import BadFile, ConfigError

MiB = 1 << 20
# A checkpoint file, and the sum of the sizes its zip records declare they hold (what torch.load allocates):
# a 20k-parameter net's is about 0.3 MB, a 1M-parameter net with its optimizer state about 12 MB.
MAX_CHECKPOINT_BYTES = 64 * MiB
MAX_NET_PARAMS = 4_000_000  # a net built from a checkpoint's spec, counted on the meta device before it is built
MAX_PICTURE_BYTES = 32 * MiB  # a picture file (PNG, JPEG, ...); also what the serve page takes in one request
MAX_PICTURE_PIXELS = 12_000_000  # a picture's width x height, from its header: a 12 MP (4000x3000) phone photo
MAX_DIGITS = 100_000  # images in one .npy or IDX file (the 60k training set, or the 70k of all MNIST, fits)
# The body of an .npy or IDX file (or what a .gz one decompresses to): 100,000 28x28 digits as bytes are
# 78 MB; the 10k test set as float32 is 31 MB.
MAX_ARRAY_BYTES = 96 * MiB
MAX_RECORD_BYTES = 16 * MiB  # a summary.json
MAX_CONFIG_BYTES = 1 * MiB  # a run dir's config.yaml
# A name that becomes one file or folder name (a model's, a study's): no separator, no leading dot, no "..".
SAFE_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
MAX_RUN_DIR_ENTRIES = 100_000  # looked at for links before a run writes into an existing folder
OWN_LINKS = ("wandb",)  # W&B links its run's files into its own folder, and re-links them on resume


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


def folder_name(name: str, key: str) -> str:
    """`name` when it is a SAFE_NAME; ConfigError naming `key` otherwise (it would leave its folder)."""
    if not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{key}={name[:60]!r} names a folder: letters, digits and _ . - only (at most 100, not "
                          "starting with a dot), so that it stays inside outputs/")
    return name


@contextmanager
def replacing(path: Union[str, Path]) -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; when the block ends without an error it is
    fsynced and renamed onto `path` (replacing a file or a symlink there, never writing through one), else
    removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and a shared data cache stay readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Union[str, Path], content: Union[str, bytes, Iterable[bytes]]) -> Path:
    """Write `content` (text, bytes or byte chunks) to `path` through `replacing`; the path."""
    chunks = [content.encode()] if isinstance(content, str) else [content] if isinstance(content, bytes) else content
    with replacing(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    return Path(path)


def refuse_links(folder: Union[str, Path]) -> None:
    """ConfigError, one line, if `folder` holds a symbolic link at any depth (W&B's own folder aside, whose links
    W&B makes itself; the folder itself must not be a link). A run writes by plain opens in many places
    (Hydra's files, run.log, checkpoints, events): in a folder handed over from elsewhere, a link planted at
    any of them would have the run write through it."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ConfigError(f"{folder}: the run dir is a symbolic link; a run writes only into a real folder")
    if not folder.is_dir():
        return
    seen = 0
    for top, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            seen += 1
            path = Path(top) / name
            if path.is_symlink():
                raise ConfigError(f"{path}: a symbolic link in the run dir, where the run would write through it; "
                                  "remove it (or start a new run dir) to run there")
            if seen > MAX_RUN_DIR_ENTRIES:
                raise ConfigError(f"{folder}: over {MAX_RUN_DIR_ENTRIES:,} entries; not a run dir")
        if Path(top) == folder:
            dirs[:] = [d for d in dirs if d not in OWN_LINKS]
