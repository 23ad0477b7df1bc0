"""IDX files, LeCun's format for MNIST, read as data: the header is checked against the file before the
body is used, so a truncated, padded, oversized or mislabelled file is one line (errors.BadFile).

    bytes 0-1: 0, byte 2: the element type (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), byte 3: the number of dims; then each dim as a big-endian uint32; then
    the elements, big-endian, row-major. A `.gz` file is decompressed first (up to the same size limit).
"""
import gzip
import math
import struct
from pathlib import Path
from typing import Union

import numpy as np

from mnist_arch.errors import BadFile
from mnist_arch.files import MAX_ARRAY_BYTES, check_file

TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
         0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def is_idx(head: bytes) -> bool:
    """Whether the first 4 bytes of a file are an IDX magic number."""
    return len(head) >= 4 and head[:2] == b"\0\0" and head[2] in TYPES and 1 <= head[3] <= 4


def read_idx(path: Union[str, Path], max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """The array an IDX file (or a .gz of one) holds, in native byte order."""
    check_file(path, "IDX file", max_bytes)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if data[:2] == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as f:
                data = f.read(max_bytes + 1)  # never more than the limit, however well it compresses
        except (OSError, EOFError) as e:
            raise BadFile(f"{path}: a damaged .gz file ({e})") from None
        if len(data) > max_bytes:
            raise BadFile(f"{path}: decompresses to over the {max_bytes >> 20:,} MiB an IDX file may be")
    return parse_idx(data, str(path))


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    if not is_idx(data[:4]):
        raise BadFile(f"{name}: not an IDX file (its first 4 bytes are no IDX magic number)")
    dtype, dims = TYPES[data[2]], data[3]
    start = 4 + 4 * dims
    if len(data) < start:
        raise BadFile(f"{name}: truncated inside its header ({len(data)} bytes)")
    shape = struct.unpack(f">{dims}I", data[4:start])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - start != expected:
        raise BadFile(f"{name}: its header promises {'x'.join(map(str, shape))} {dtype.name} values "
                      f"({expected:,} bytes) but it holds {len(data) - start:,} bytes: truncated or not one IDX file")
    return np.frombuffer(data, dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))
