"""Any picture of a digit, prepared the way MNIST's digits were: grayscale, light ink on a dark ground,
cropped to the ink, fitted into a 20x20 box keeping the aspect ratio, and centred by its centre of mass
in a 28x28 image (LeCun et al.'s description of the set). Pixels in [0, 1].

A picture that already is an MNIST digit (28x28, dark ground) is used as it is, so an MNIST image saved
as a PNG gives exactly the pixels it had.

Every file is data from elsewhere: its kind is told by its first bytes (an IDX or .npy header, else a
picture), its size and shape are checked against the limits in mnist_arch/files.py before it is decoded,
and anything this cannot read is one line (errors.BadFile), whatever the bytes.
"""
import functools
import re
import warnings
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib import format as npy
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_arch.data.idx import GZIP_MAGIC, is_idx, read_idx
from mnist_arch.errors import BadFile
from mnist_arch.files import MAX_ARRAY_BYTES, MAX_DIGITS, MAX_PICTURE_BYTES, MAX_PICTURE_PIXELS, check_file

SIZE, BOX = 28, 20  # the image, and the box the digit is fitted into
INK = 0.1  # after normalising to [0, 1]: pixels above this are ink


def prepare(image: np.ndarray) -> torch.Tensor:
    """(H, W) grayscale, any real range -> (28, 28) float32 in [0, 1], MNIST-style. BadFile (without a path:
    the caller adds it) when it is not a 2-D picture of finite numbers with some ink. Works in float32 on one
    copy of the picture: a 12 MP photo costs about 50 MB here, not the 200 MB of float64 copies."""
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise BadFile(f"pixels of type {array.dtype} are not numbers")
    if array.ndim != 2 or min(array.shape) < 1:
        raise BadFile(f"expected a 2-D grayscale image, got shape {tuple(array.shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadFile("the image holds NaN or infinite values")
    if array.dtype.kind == "f":  # float64 values past float32's range: bring them into it (the range is stretched anyway)
        largest = max(abs(float(array.max())), abs(float(array.min())))
        if largest > 1e30:
            array = array / largest
    x = torch.from_numpy(np.array(array, dtype=np.float32))  # our one copy: changed in place below
    if tuple(x.shape) == (SIZE, SIZE) and 0 <= x.min() and x.max() <= 255:
        as_is = x / 255 if x.max() > 1 else x.clone()  # uint8 pixels, or already in [0, 1]
        if _border(as_is).max() <= INK and as_is.max() > INK:
            return as_is.clamp(0, 1)  # already an MNIST digit: leave its pixels alone
    low, high = x.min(), x.max()
    if not high - low > 1e-6 * max(1.0, abs(float(high))):
        raise BadFile("the image is blank (one flat colour): no digit to read")
    half_range = high / 2 - low / 2  # halves: a range as wide as float32's still subtracts without overflow
    x.div_(2).sub_(low / 2).div_(half_range)
    if _border(x).median() > 0.5:  # dark ink on a light ground, as on paper: MNIST's ink is light
        x.neg_().add_(1)
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
    out[top: top + h, left: left + w] = x
    return out


def _border(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])


NPY_MAGIC = b"\x93NUMPY"


def read(path: Path, max_digits: int = MAX_DIGITS) -> List[Tuple[str, torch.Tensor]]:
    """(name, prepared 28x28 image) for each digit in the file: one for a picture, N for an .npy stack or
    an IDX file (.gz or not). BadFile, starting with the path, when the file is not one this reads."""
    stack = read_digits(path, max_digits)
    return [(name, prepared(path, name, image)) for name, image in zip(digit_names(path, len(stack)), stack)]


def read_digits(path: Path, max_digits: int = MAX_DIGITS) -> np.ndarray:
    """The file's images as they are, (N, H, W), N from 1 to `max_digits`; their count and size are judged
    from the file's header, before its body is read or decoded."""
    path = Path(path)
    check_file(path, "picture or array", max(MAX_PICTURE_BYTES, MAX_ARRAY_BYTES))
    with open(path, "rb") as f:
        head = f.read(6)
    shape_ok = functools.partial(check_shape, path, max_digits=max_digits)
    if is_idx(head) or head[:2] == GZIP_MAGIC:
        stack = read_idx(path, check_shape=shape_ok)
    elif head == NPY_MAGIC:
        stack = _npy(path, shape_ok)
    else:
        stack = _picture(path)[None]
    return stack if stack.ndim == 3 else stack[None]


def check_shape(path: Path, shape: Tuple[int, ...], max_digits: int = MAX_DIGITS) -> None:
    """BadFile unless `shape` is one picture (H, W) or a stack (N, H, W) within the limits."""
    if len(shape) not in (2, 3):
        raise BadFile(f"{path}: an array of shape {tuple(shape)}; a digit is (H, W) and a stack (N, H, W)")
    count, (height, width) = (1 if len(shape) == 2 else shape[0]), shape[-2:]
    if not 1 <= count <= max_digits or height * width > MAX_PICTURE_PIXELS:
        size = f"{MAX_PICTURE_PIXELS / 1e6:.0f} megapixels"
        takes = f"one image of at most {size} is" if max_digits == 1 else \
            f"1 to {max_digits:,} images of at most {size} each are"
        raise BadFile(f"{path}: holds {count:,} images of {height}x{width}; {takes} read here")


def digit_names(path: Path, count: int) -> List[str]:
    """What predict calls each digit of a file: its name, or name[i] in a stack."""
    path = Path(path)
    return [path.name] if count == 1 else [f"{path.name}[{i}]" for i in range(count)]


def prepared(path: Path, name: str, image: np.ndarray) -> torch.Tensor:
    """prepare(image), its refusal naming the file and the digit."""
    try:
        return prepare(image)
    except BadFile as e:
        raise BadFile(f"{Path(path).parent / name}: {e}") from None


def _npy(path: Path, check_shape: Callable[[Tuple[int, ...]], None]) -> np.ndarray:
    """An .npy array of numbers, its header checked (dtype, shape by `check_shape`, size against the file)
    before the body is read; never a pickle."""
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
        check_shape(shape)
        remaining = path.stat().st_size - f.tell()
        if remaining < count * dtype.itemsize:
            raise BadFile(f"{path}: its header promises {shape} {dtype} ({count * dtype.itemsize:,} bytes) but it "
                          f"holds {remaining:,}: truncated")
        body = np.fromfile(f, dtype=dtype, count=count)
    return body.reshape(shape, order="F" if fortran else "C")


# Modes whose pixels are wider than a byte: taken as numbers (prepare() stretches their range), not cut to 8 bits.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _picture(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # PIL warns of damage it reads past ("Corrupt EXIF data", "Truncated File Read"): refuse the file
            warnings.simplefilter("error")
            return _decode(path)
    except BadFile:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own guard, in open()
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels.group(1)):,} pixels, over" if pixels else "over"
        raise BadFile(f"{path}: {size} the {MAX_PICTURE_PIXELS / 1e6:.0f} megapixels predict decodes") from None
    except UnidentifiedImageError:
        raise BadFile(f"{path}: not an image file (PNG, JPEG, ...), an .npy array or an IDX file") from None
    except Exception as e:  # noqa: BLE001 - a damaged picture fails in many ways inside PIL; all one line
        raise BadFile(f"{path}: a damaged or unsupported picture ({type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0][:120]})") from None


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        width, height = image.size  # from the header: nothing is decoded yet
        if width * height > MAX_PICTURE_PIXELS:
            raise BadFile(f"{path}: {width}x{height} pixels, over the {MAX_PICTURE_PIXELS / 1e6:.0f} megapixels "
                          "predict decodes")
        image = ImageOps.exif_transpose(image)  # a phone photo stands as it was shot
        if image.mode in WIDE_MODES:  # float32: 16-bit values exactly, 32-bit ones to 7 digits (their range is stretched)
            return np.asarray(image, dtype=np.float32)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            ground = Image.new("RGBA", image.size, "white")  # transparent parts are paper
            image = Image.alpha_composite(ground, image.convert("RGBA"))
        return np.asarray(image.convert("L"))  # uint8: prepare() makes its one float32 copy
