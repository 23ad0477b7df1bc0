"""Any picture of a digit, prepared the way MNIST's digits were: grayscale, light ink on a dark ground,
cropped to the ink, fitted into a 20x20 box keeping the aspect ratio, and centred by its centre of mass
in a 28x28 image (LeCun et al.'s description of the set). Pixels in [0, 1].

A picture that already is an MNIST digit (28x28, dark ground) is used as it is, so an MNIST image saved
as a PNG gives exactly the pixels it had.

Every file is data from elsewhere: its kind is told by its first bytes (an IDX or .npy header, else a
picture), its size and shape are checked against the limits in mnist_arch/files.py before it is decoded,
and anything this cannot read is one line (errors.BadFile), whatever the bytes.
"""
import re
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mnist_arch.data.idx import GZIP_MAGIC, is_idx, read_idx
from mnist_arch.errors import BadFile
from mnist_arch.files import MAX_ARRAY_BYTES, MAX_DIGITS, MAX_PICTURE_BYTES, MAX_PICTURE_PIXELS, check_file

SIZE, BOX = 28, 20  # the image, and the box the digit is fitted into
INK = 0.1  # after normalising to [0, 1]: pixels above this are ink


def prepare(image: np.ndarray) -> torch.Tensor:
    """(H, W) grayscale, any real range -> (28, 28) float32 in [0, 1], MNIST-style. BadFile (without a path:
    the caller adds it) when it is not a 2-D picture of finite numbers with some ink."""
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise BadFile(f"pixels of type {array.dtype} are not numbers")
    x = torch.as_tensor(array.astype(np.float64))  # float64: a range as wide as float32's still subtracts
    if x.ndim != 2 or min(x.shape) < 1:
        raise BadFile(f"expected a 2-D grayscale image, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise BadFile("the image holds NaN or infinite values")
    if tuple(x.shape) == (SIZE, SIZE) and 0 <= x.min() and x.max() <= 255:
        pixels = torch.as_tensor(array.astype(np.float32))  # float32 as in training: the very same values
        as_is = pixels / 255 if pixels.max() > 1 else pixels  # uint8 pixels, or already in [0, 1]
        if _border(as_is).max() <= INK and as_is.max() > INK:
            return as_is.clamp(0, 1)  # already an MNIST digit: leave its pixels alone
    low, high = x.min(), x.max()
    if not high - low > 1e-6 * max(1.0, abs(high)):
        raise BadFile("the image is blank (one flat colour): no digit to read")
    x = (x - low) / (high - low)
    if _border(x).median() > 0.5:  # dark ink on a light ground, as on paper: MNIST's ink is light
        x = 1 - x
    rows, cols = (x > INK).any(dim=1).nonzero().flatten(), (x > INK).any(dim=0).nonzero().flatten()
    if len(rows) == 0:
        raise BadFile("no ink found in the image")
    x = x[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    scale = BOX / max(x.shape)
    h, w = max(1, round(x.shape[0] * scale)), max(1, round(x.shape[1] * scale))
    x = F.interpolate(x[None, None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    x = x.clamp(0, 1)
    mass = x.sum()
    cy = (x.sum(dim=1) * torch.arange(h)).sum() / mass
    cx = (x.sum(dim=0) * torch.arange(w)).sum() / mass
    top = int(round(SIZE / 2 - 0.5 - cy.item()))
    left = int(round(SIZE / 2 - 0.5 - cx.item()))
    top, left = min(max(top, 0), SIZE - h), min(max(left, 0), SIZE - w)  # keep the whole box in the image
    out = torch.zeros(SIZE, SIZE)
    out[top: top + h, left: left + w] = x.float()
    return out


def _border(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])


NPY_MAGIC = b"\x93NUMPY"


def read(path: Path) -> List[Tuple[str, torch.Tensor]]:
    """(name, prepared 28x28 image) for each digit in the file: one for a picture, N for an .npy stack or
    an IDX file (.gz or not). BadFile, starting with the path, when the file is not one this reads."""
    path = Path(path)
    check_file(path, "picture or array", max(MAX_PICTURE_BYTES, MAX_ARRAY_BYTES))
    with open(path, "rb") as f:
        head = f.read(6)
    if is_idx(head) or head[:2] == GZIP_MAGIC:
        stack = read_idx(path)
    elif head == NPY_MAGIC:
        stack = _npy(path)
    else:
        stack = _picture(path)[None]
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise BadFile(f"{path}: an array of shape {stack.shape}; a digit is (H, W) and a stack (N, H, W)")
    if len(stack) == 0 or len(stack) > MAX_DIGITS or stack.shape[1] * stack.shape[2] > MAX_PICTURE_PIXELS:
        raise BadFile(f"{path}: holds {len(stack):,} images of {stack.shape[1]}x{stack.shape[2]}; predict reads 1 "
                      f"to {MAX_DIGITS:,} images of at most {MAX_PICTURE_PIXELS / 1e6:.0f} megapixels each")
    names = [path.name] if len(stack) == 1 else [f"{path.name}[{i}]" for i in range(len(stack))]
    digits = []
    for name, image in zip(names, stack):
        try:
            digits.append((name, prepare(image)))
        except BadFile as e:
            raise BadFile(f"{path.parent / name}: {e}") from None
    return digits


def _npy(path: Path) -> np.ndarray:
    """An .npy array of numbers, its header checked (dtype, shape, size against the file) before the body
    is read; never a pickle."""
    from numpy.lib import format as npy

    with open(path, "rb") as f:
        try:
            version = npy.read_magic(f)
            read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
            shape, fortran, dtype = read_header(f)
        except (ValueError, SyntaxError, TypeError, OSError) as e:
            raise BadFile(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise BadFile(f"{path}: an array of {dtype}; a picture's pixels are real numbers (bool, int, uint or "
                          "float)")
        count = int(np.prod(shape, dtype=object))
        if count == 0:
            raise BadFile(f"{path}: an empty array (shape {shape}): no images")
        remaining = path.stat().st_size - f.tell()
        if remaining < count * dtype.itemsize:
            raise BadFile(f"{path}: its header promises {shape} {dtype} ({count * dtype.itemsize:,} bytes) but it "
                          f"holds {remaining:,}: truncated")
        body = np.fromfile(f, dtype=dtype, count=count)
    return body.reshape(shape, order="F" if fortran else "C")


# Modes whose pixels are wider than a byte: taken as numbers (prepare() stretches their range), not cut to 8 bits.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _picture(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL warns of damage it reads past ("Corrupt EXIF data", "Truncated File Read"): refuse the file
            warnings.simplefilter("error")
            return _decode(path)
    except BadFile:
        raise
    except Image.DecompressionBombError as e:  # PIL's own guard, at twice its default limit, fires in open()
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels.group(1)):,} pixels, over" if pixels else "over"
        raise BadFile(f"{path}: {size} the {MAX_PICTURE_PIXELS / 1e6:.0f} megapixels predict decodes") from None
    except UnidentifiedImageError:
        raise BadFile(f"{path}: not an image file (PNG, JPEG, ...), an .npy array or an IDX file") from None
    except Exception as e:  # noqa: BLE001 - a damaged picture fails in many ways inside PIL; all one line
        raise BadFile(f"{path}: a damaged or unsupported picture ({type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0][:120]})") from None


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        width, height = image.size  # from the header: nothing is decoded yet
        if width * height > MAX_PICTURE_PIXELS:
            raise BadFile(f"{path}: {width}x{height} pixels, over the {MAX_PICTURE_PIXELS / 1e6:.0f} megapixels "
                          "predict decodes")
        image = ImageOps.exif_transpose(image)  # a phone photo stands as it was shot
        if image.mode in WIDE_MODES:
            return np.asarray(image, dtype=np.float64)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            ground = Image.new("RGBA", image.size, "white")  # transparent parts are paper
            image = Image.alpha_composite(ground, image.convert("RGBA"))
        return np.asarray(image.convert("L"), dtype=np.float32)
