"""IDX files, LeCun's format for MNIST, read as data: the header is checked before the body is read, so a
truncated, padded, oversized or mislabelled file is one line (errors.BadFile), and a file whose header
promises more than the limits (mnist_arch/files.py) is refused before any of it is read or decompressed.

    bytes 0-1: 0, byte 2: the element type (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), byte 3: the number of dims; then each dim as a big-endian uint32; then
    the elements, big-endian, row-major. A `.gz` file is decompressed as it is read, never past what its
    header promises.
"""
import gzip
import io
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Tuple, Union

import numpy as np

from mnist_arch.errors import BadFile
from mnist_arch.files import MAX_ARRAY_BYTES, MiB, check_file

TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
         0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def is_idx(head: bytes) -> bool:
    """Whether the first 4 bytes of a file are an IDX magic number."""
    return len(head) >= 4 and head[:2] == b"\0\0" and head[2] in TYPES and 1 <= head[3] <= 4


def read_idx(path: Union[str, Path], max_bytes: int = MAX_ARRAY_BYTES,
             check_shape: Optional[Callable[[Tuple[int, ...]], None]] = None) -> np.ndarray:
    """The array an IDX file (or a .gz of one) holds, in native byte order. Its body may be at most
    `max_bytes`, judged from the header, which `check_shape` (raising BadFile) may judge too."""
    check_file(path, "IDX file", max_bytes)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        try:
            return read_stream(gzip.GzipFile(fileobj=raw) if compressed else raw, str(path), max_bytes, check_shape)
        except (OSError, EOFError, zlib.error) as e:
            raise BadFile(f"{path}: a damaged .gz file ({e})") from None


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The array IDX bytes hold (read_idx's checks, on bytes in memory)."""
    return read_stream(io.BytesIO(data), name)


def read_stream(stream: BinaryIO, name: str, max_bytes: int = MAX_ARRAY_BYTES,
                check_shape: Optional[Callable[[Tuple[int, ...]], None]] = None) -> np.ndarray:
    head = stream.read(4)
    if not is_idx(head):
        raise BadFile(f"{name}: not an IDX file (its first 4 bytes are no IDX magic number)")
    dtype, dims = TYPES[head[2]], head[3]
    header = stream.read(4 * dims)
    if len(header) < 4 * dims:
        raise BadFile(f"{name}: truncated inside its header ({4 + len(header)} bytes)")
    shape = struct.unpack(f">{dims}I", header)
    expected = math.prod(shape) * dtype.itemsize
    promise = f"its header promises {'x'.join(map(str, shape))} {dtype.name} values ({expected:,} bytes)"
    if check_shape is not None:
        check_shape(shape)
    if expected > max_bytes:
        raise BadFile(f"{name}: {promise}, over the {max_bytes / MiB:,.0f} MiB an IDX file may hold")
    body = bytearray(expected)  # filled in place: the only copy of the data, writable
    view, got = memoryview(body), 0
    while got < expected:
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    if got < expected:
        raise BadFile(f"{name}: {promise} but it holds {got:,} bytes: truncated or not one IDX file")
    if stream.read(1):
        raise BadFile(f"{name}: {promise} but it holds more: padded, or not one IDX file")
    array = np.frombuffer(body, dtype).reshape(shape)
    if dtype.itemsize > 1:  # big-endian on disk: swap in place rather than copy
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array.view(dtype.newbyteorder("="))
