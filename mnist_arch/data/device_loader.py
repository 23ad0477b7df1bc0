"""The default data path: MNIST as one uint8 tensor on the training device, batched by slicing.

No Dataset, no worker processes, no per-image Python: each epoch draws one seeded permutation, each
batch is an index into the resident tensor, and normalisation and augmentation run per batch,
vectorised, on the device. Same seed and epoch -> same batches and same augmentations (on the same
device type). Under DDP each rank takes its own shard of the permutation, as DistributedSampler does.
"""
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from mnist_arch.data.fetch import DataError

MEAN, STD = 0.1307, 0.3081  # of the 60k training images, pixels scaled to [0, 1]
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (rows, columns): tta=shifts's five views of an image


def tta_mean(probabilities, x: torch.Tensor) -> torch.Tensor:
    """The mean of `probabilities` (images -> (N, 10)) over TTA_SHIFTS: the image and its four one-pixel shifts. A
    roll wraps pixels round the border, which on MNIST is background only (each digit sits in the middle 20x20)."""
    return torch.stack([probabilities(torch.roll(x, shifts=shift, dims=(2, 3))) for shift in TTA_SHIFTS]).mean(dim=0)


@dataclass(frozen=True)
class Augment:
    """Strengths of the on-device augmentation (the data group's keys of the same names; their defaults
    live in conf/data/mnist.yaml). `Augment.off()` is none at all."""

    rotation: float  # degrees, uniform in [-rotation, rotation]
    rotation_p: float  # probability that an image is rotated at all
    translate: float  # fraction of the image side, uniform in [-translate, translate] per axis
    scale: float  # zoom factor uniform in [1 - scale, 1 + scale]
    brightness: float  # pixel factor uniform in [1 - brightness, 1 + brightness] (ColorJitter's)
    contrast: float  # contrast factor uniform in [1 - contrast, 1 + contrast] (ColorJitter's)
    jitter_p: float  # probability that an image gets the brightness/contrast jitter
    erasing: float  # probability of erasing one rectangle (2%-33% of the image, set to 0 after normalising)

    @classmethod
    def off(cls) -> "Augment":
        return cls(rotation=0.0, rotation_p=1.0, translate=0.0, scale=0.0, brightness=0.0, contrast=0.0,
                   jitter_p=1.0, erasing=0.0)

    @property
    def warps(self) -> bool:
        return self.rotation > 0 or self.translate > 0 or self.scale > 0

    @property
    def jitters(self) -> bool:
        return self.brightness > 0 or self.contrast > 0

    @property
    def random(self) -> bool:
        return self.warps or self.jitters or self.erasing > 0


def affine_warp(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """One random rotation + scale + translation per image, as a single bilinear resampling.

    `x` holds pixels in [0, 1] (before normalising), so the area uncovered by the warp is 0 = background.
    """
    n = x.shape[0]
    u = torch.rand(n, 4, device=x.device, generator=generator) * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * math.radians(aug.rotation)
    if aug.rotation_p < 1:  # drawn only then, so recipes without it keep their random stream
        angle = angle * (torch.rand(n, device=x.device, generator=generator) < aug.rotation_p)
    zoom = 1 + u[:, 1] * aug.scale
    shift = u[:, 2:] * aug.translate * 2  # normalised coordinates span 2 per image side
    # affine_grid maps output coordinates to input ones: the inverse of "zoom, rotate, then shift".
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (N, 2, 2)
    offset = -(inverse @ shift.unsqueeze(2))  # (N, 2, 1)
    grid = F.affine_grid(torch.cat([inverse, offset], 2), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """torchvision ColorJitter's brightness then contrast on [0, 1] pixels, per image, vectorised: brightness
    scales the pixels, contrast blends each image with its own mean; applied with probability jitter_p."""
    n = x.shape[0]
    u = torch.rand(n, 3, 1, 1, 1, device=x.device, generator=generator)
    keep = u[:, 2] >= aug.jitter_p  # these images are left as they are
    brightness = torch.where(keep, 1.0, 1 + (u[:, 0] * 2 - 1) * aug.brightness)
    contrast = torch.where(keep, 1.0, 1 + (u[:, 1] * 2 - 1) * aug.contrast)
    x = (x * brightness).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean).clamp(0, 1)


def random_erase(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision RandomErasing's defaults (area 2%-33%, aspect 0.3-3.3, value 0), vectorised."""
    n, _, h, w = x.shape
    u = torch.rand(n, 5, device=x.device, generator=generator)
    area = (0.02 + u[:, 0] * (0.33 - 0.02)) * h * w
    aspect = torch.exp(math.log(0.3) + u[:, 1] * (math.log(3.3) - math.log(0.3)))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (u[:, 2] * (h - eh + 1)).floor()
    left = (u[:, 3] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)))
    erase = inside & (u[:, 4] < probability).view(n, 1, 1)
    return x.masked_fill(erase.unsqueeze(1), 0.0)


def augment_batch(x: torch.Tensor, augment: Augment, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A batch of [0, 1] pixels (N, 1, H, W) augmented and normalised: warp, jitter, normalise, erase. The one
    augmentation of both pipelines (the tensor pipeline's batches on the device; the torchvision pipeline's as its
    DataLoader gives them); `generator` draws every random number (None: no random augmentation)."""
    if augment.warps:
        x = affine_warp(x, augment, generator)
    if augment.jitters:
        x = color_jitter(x, augment, generator)
    x = x.sub(MEAN).div(STD)
    if augment.erasing > 0:
        x = random_erase(x, augment.erasing, generator)
    return x


def epoch_generator(augment: Augment, seed: int, epoch: int, device) -> Optional[torch.Generator]:
    """The augmentation's random stream for one epoch: the same seed and epoch give the same augmentations (on the
    same device type); None without random augmentation."""
    if not augment.random:
        return None
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch + 1)


class _EpochSeed:
    """Lightning calls `set_epoch` on a loader's `.sampler` every epoch (resume included)."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class AugmentedBatches:
    """The torchvision pipeline's loader: a DataLoader of [0, 1] pixels (ToTensor), each batch augmented and
    normalised as it leaves, by the tensor pipeline's own functions (`augment_batch`), with the epoch's stream."""

    def __init__(self, loader, augment: Augment, seed: int):
        self.loader, self.augment, self.seed = loader, augment, seed
        self.sampler = _EpochSeed()
        self.batch_sampler = None  # Lightning inspects loaders that have a `sampler` for this too

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        generator = epoch_generator(self.augment, self.seed, self.sampler.epoch, "cpu")
        for x, y in self.loader:
            yield augment_batch(x, self.augment, generator), y


class DeviceLoader:
    """Iterates (images, labels) batches sliced from tensors that already live on the device; with `targets`
    (one row per image, e.g. a teacher's outputs computed once), (images, labels, targets) batches."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        augment: Optional[Augment] = None,
        rank: int = 0,
        world_size: int = 1,
        targets: Optional[torch.Tensor] = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 3 or len(images) != len(labels):
            raise DataError(f"expected uint8 (N, H, W) images and N labels, got {tuple(images.shape)} "
                            f"{images.dtype} and {len(labels)} labels")
        if targets is not None and len(targets) != len(images):
            raise DataError(f"{len(targets)} target rows for {len(images)} images")
        self.images, self.labels, self.targets = images, labels, targets
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.augment = seed, augment or Augment.off()
        self.rank, self.world_size = rank, world_size
        self.sampler = _EpochSeed()
        self.batch_sampler = None  # Lightning inspects loaders that have a `sampler` for this too

    def _shard_size(self) -> int:
        return math.ceil(len(self.images) / self.world_size)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample order for the current epoch (on the CPU, cheap: N int64)."""
        n = len(self.images)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.sampler.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self._shard_size() * self.world_size
        if total > n:  # pad by wrapping, as DistributedSampler does, so every rank has equal length
            order = torch.cat([order, order[: total - n]])
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, ...]]:
        device = self.images.device
        order = self.indices().to(device)
        generator = epoch_generator(self.augment, self.seed, self.sampler.epoch, device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = augment_batch(self.images[idx].unsqueeze(1).float().div(255), self.augment, generator)
            yield (x, self.labels[idx]) if self.targets is None else (x, self.labels[idx], self.targets[idx])
