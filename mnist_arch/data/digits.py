"""Any picture of a digit, prepared the way MNIST's digits were: grayscale, light ink on a dark ground,
cropped to the ink, fitted into a 20x20 box keeping the aspect ratio, and centred by its centre of mass
in a 28x28 image (LeCun et al.'s description of the set). Pixels in [0, 1].

A picture that already is an MNIST digit (28x28, dark ground) is used as it is, so an MNIST image saved
as a PNG gives exactly the pixels it had.
"""
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mnist_arch.errors import DataError

SIZE, BOX = 28, 20  # the image, and the box the digit is fitted into
INK = 0.1  # after normalising to [0, 1]: pixels above this are ink


def prepare(image: np.ndarray) -> torch.Tensor:
    """(H, W) grayscale, any range -> (28, 28) float in [0, 1], MNIST-style. DataError if there is no ink."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if x.ndim != 2 or min(x.shape) < 1:
        raise DataError(f"expected a 2-D grayscale image, got shape {tuple(x.shape)}")
    if tuple(x.shape) == (SIZE, SIZE) and x.min() >= 0:
        as_is = x / 255 if x.max() > 1 else x  # uint8 pixels, or already in [0, 1]
        if _border(as_is).max() <= INK and as_is.max() > INK:
            return as_is.clamp(0, 1)  # already an MNIST digit: leave its pixels alone
    low, high = x.min(), x.max()
    if high - low < 1e-6:
        raise DataError("the image is blank (one flat colour): no digit to read")
    x = (x - low) / (high - low)
    if _border(x).median() > 0.5:  # dark ink on a light ground, as on paper: MNIST's ink is light
        x = 1 - x
    rows, cols = (x > INK).any(dim=1).nonzero().flatten(), (x > INK).any(dim=0).nonzero().flatten()
    if len(rows) == 0:
        raise DataError("no ink found in the image")
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


IDX_IMAGES = 0x00000803  # magic number of an IDX file of uint8 images (N, H, W)


def read(path: Path) -> List[Tuple[str, torch.Tensor]]:
    """(name, prepared 28x28 image) for each digit in the file: one for a picture, N for an .npy stack or
    an IDX file. DataError when the file is not an image this reads."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a directory")
    if not path.is_file():
        raise DataError("no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if int.from_bytes(head, "big") == IDX_IMAGES:
        from torchvision.datasets.mnist import read_image_file

        stack = read_image_file(str(path)).numpy()
    elif path.suffix.lower() == ".npy":
        try:
            stack = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"not a numpy array file: {e}") from e
        stack = stack[None] if stack.ndim == 2 else stack
        if stack.ndim != 3:
            raise DataError(f"an .npy digit must be (H, W) or (N, H, W); got shape {stack.shape}")
    else:
        stack = _picture(path)[None]
    names = [path.name] if len(stack) == 1 else [f"{path.name}[{i}]" for i in range(len(stack))]
    return [(name, prepare(image)) for name, image in zip(names, stack)]


def _picture(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                ground = Image.new("RGBA", image.size, "white")  # transparent parts are paper
                image = Image.alpha_composite(ground, image.convert("RGBA"))
            return np.asarray(image.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError("not an image file (PNG, JPEG, ...), an .npy array or an IDX file") from e
