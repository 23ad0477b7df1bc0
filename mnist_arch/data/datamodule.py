"""MNIST as a LightningDataModule: verified files in, normalised (and augmented) batches out.

Two pipelines give the same normalised values for the same image, and augment with the same code
(`device_loader.augment_batch`):
- `tensor` (default): the whole split lives as one uint8 tensor on the training device; batches are
  sliced from a seeded permutation and augmented there, vectorised (`device_loader.py`);
- `torchvision`: the usual `datasets.MNIST` + `ToTensor` + `DataLoader` (worker processes, your own
  per-image transforms), each batch then augmented and normalised as it leaves the loader; kept as the
  benchmarks' "usual" pipeline (BENCHMARKS.md).

Validation follows the references by default (`val="test"`: the official 10k test set is the
validation set). `val="holdout"` carves `holdout_size` images out of the 60k training set with a fixed
permutation (the same for every run seed), and the 10k test set is then touched only by the final test.
`val="fold"` validates on fold `fold` of `folds` stratified folds of the 60k training set (fixed too: every
design and seed sees the same folds) and trains on the others; a multirun over the folds validates every
training image once (out-of-fold).
"""
import copy
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from mnist_arch.config.schema import fold_problem, holdout_problem
from mnist_arch.data.device_loader import Augment, AugmentedBatches, DeviceLoader
from mnist_arch.data.fetch import DataError, default_root, ensure_mnist
from mnist_arch.errors import ConfigError
from mnist_arch.rules import PROBE_BATCH, bad_output, output_shape

HOLDOUT_SEED = 0  # fixed, so the holdout split does not move with the run's seed
FOLD_SEED = 0  # fixed, so the folds do not move with the run's seed or the design


def stratified_fold(labels: torch.Tensor, folds: int, fold: int, seed: int = FOLD_SEED):
    """(train indices, val indices) of fold `fold` of `folds`: each digit's images shuffled by `seed` and dealt
    into the folds in turn (the deal going on from digit to digit, so the folds' sizes differ by one at most),
    so every fold holds each digit in proportion, the folds are disjoint and together cover every image once.
    Both index lists sorted."""
    generator = torch.Generator().manual_seed(seed)
    in_fold = torch.empty(len(labels), dtype=torch.long)
    dealt = 0
    for digit in labels.unique().tolist():
        members = (labels == digit).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        in_fold[members] = (torch.arange(len(members)) + dealt) % folds
        dealt += len(members)
    return (in_fold != fold).nonzero().flatten(), (in_fold == fold).nonzero().flatten()


class MNISTDataModule(pl.LightningDataModule):
    def __init__(self, *, root: Optional[str], pipeline: str, val: str, holdout_size: int, folds: int, fold: int,
                 batch_size: int,
                 eval_batch_size: int, drop_last: bool, rotation: float, rotation_p: float, translate: float,
                 scale: float, brightness: float, contrast: float, jitter_p: float, erasing: float,
                 progressive_size: int, progressive_epochs: int, num_workers: int, download: bool, verify: bool,
                 fetch_timeout_s: float, seed: int):
        """The `data` config group's keys (conf/data/mnist.yaml holds their defaults, config/schema.py their
        checks), and the run's seed."""
        super().__init__()
        self.root = Path(root).expanduser() if root else default_root()
        self.pipeline, self.val, self.holdout_size, self.folds, self.fold = pipeline, val, holdout_size, folds, fold
        self.batch_size, self.eval_batch_size, self.drop_last = batch_size, eval_batch_size, drop_last
        self.augment = Augment(rotation=rotation, rotation_p=rotation_p, translate=translate, scale=scale,
                               brightness=brightness, contrast=contrast, jitter_p=jitter_p, erasing=erasing)
        self.progressive_size, self.progressive_epochs = progressive_size, progressive_epochs
        self.num_workers, self.download, self.verify = num_workers, download, verify
        self.fetch_timeout_s, self.seed = fetch_timeout_s, seed
        self.splits = None  # name -> (uint8 images, int64 labels), or (Dataset, None) for torchvision
        # val and test: (the set their images come from, "train" or "test"; their indices there, in loader order)
        self.eval_index = None
        self.train_targets = None  # a row per training image, batched beside it (teach())
        self.train_loader = None  # the last one made: Lightning asks for it before the fit starts (the scheduler's length)

    @property
    def same_images_every_epoch(self) -> bool:
        """No random augmentation and no progressive resizing, on the tensor pipeline (whose batches teach() can
        extend)."""
        return self.pipeline == "tensor" and not self.augment.random and not self.progressive_epochs

    def teach(self, outputs) -> bool:
        """Computes `outputs(images)` once for every training image, batched beside it from then on, where that
        is exact: each epoch shows the same images. A teacher's eval-mode outputs then cost one pass over the
        training set, not one a step. False where it is not exact (nothing computed)."""
        if not self.same_images_every_epoch:
            return False
        images, labels = self.splits["train"]
        rows = [outputs(x) for x, _ in DeviceLoader(images, labels, self.eval_batch_size)]
        self.train_targets = torch.cat(rows)
        if self.train_loader is not None:  # made already (Lightning counts the batches before on_fit_start)
            self.train_loader.targets = self.train_targets
        return True

    def prepare_data(self) -> None:
        ensure_mnist(self.root, download=self.download, timeout=self.fetch_timeout_s, verify=self.verify)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is not None:
            return
        # prepare_data runs on one process per node; every process re-checks before reading.
        ensure_mnist(self.root, download=False, timeout=self.fetch_timeout_s, verify=self.verify)
        train = datasets.MNIST(self.root, train=True, download=False)
        test = datasets.MNIST(self.root, train=False, download=False)
        n = len(train)
        problem = {"holdout": lambda: holdout_problem(self.holdout_size, n),
                   "fold": lambda: fold_problem(self.folds, self.fold, n)}.get(self.val, lambda: None)()
        if problem:  # the gate checked it against MNIST's 60k; your own files may hold fewer
            raise DataError(problem)
        if self.val == "fold":
            train_idx, holdout_idx = stratified_fold(train.targets, self.folds, self.fold)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
            train_idx, holdout_idx = order[self.holdout_size:], order[: self.holdout_size]
        every_test_image = ("test", torch.arange(len(test)))
        self.eval_index = {"val": every_test_image if self.val == "test" else ("train", holdout_idx),
                           "test": every_test_image}
        if self.pipeline == "torchvision":
            self.splits = self._torchvision_splits(train, test, train_idx, holdout_idx)
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        images, labels = train.data.to(device), train.targets.to(device)
        test_split = (test.data.to(device), test.targets.to(device))
        if self.val == "test":
            self.splits = {"train": (images, labels), "val": test_split, "test": test_split}
        else:
            train_idx, holdout_idx = train_idx.to(device), holdout_idx.to(device)
            self.splits = {"train": (images[train_idx], labels[train_idx]),
                           "val": (images[holdout_idx], labels[holdout_idx]), "test": test_split}

    def _torchvision_splits(self, train, test, train_idx: torch.Tensor, holdout_idx: torch.Tensor) -> dict:
        # Views of the datasets setup() already read, with ToTensor: [0, 1] pixels, augmented and normalised by
        # the batch (AugmentedBatches): the files are read once, the augmentation written once.
        train, test = _with_transform(train, transforms.ToTensor()), _with_transform(test, transforms.ToTensor())
        if self.val == "test":
            return {"train": (train, None), "val": (test, None), "test": (test, None)}
        return {"train": (Subset(train, train_idx.tolist()), None),
                "val": (Subset(train, holdout_idx.tolist()), None), "test": (test, None)}

    def _loader(self, split: str):
        train = split == "train"
        batch_size = self.batch_size if train else self.eval_batch_size
        if self.pipeline == "torchvision":
            loader = DataLoader(self.splits[split][0], batch_size=batch_size, shuffle=train,
                                drop_last=self.drop_last and train,
                                generator=torch.Generator().manual_seed(self.seed) if train else None,
                                num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
            return AugmentedBatches(loader, self.augment if train else Augment.off(), self.seed)
        images, labels = self.splits[split]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        # overfit_batches trains on the same first batches every epoch: no shuffling (Lightning turns it
        # off for its own samplers; this loader is not one)
        shuffle = train and not (self.trainer is not None and self.trainer.overfit_batches > 0)
        loader = DeviceLoader(images, labels, batch_size, shuffle=shuffle, drop_last=self.drop_last and train,
                              seed=self.seed, augment=self.augment if train else None, rank=rank, world_size=world,
                              targets=self.train_targets if train else None)
        if train:
            self.train_loader = loader
        return loader

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Progressive resizing: the first `progressive_epochs` training epochs see smaller images. Here,
        on the device and after augmentation, so it is one vectorised resize per batch on either pipeline."""
        if self.progressive_epochs and self.trainer.training and self.trainer.current_epoch < self.progressive_epochs:
            side = self.progressive_size
            batch = (F.interpolate(batch[0], size=(side, side), mode="bilinear", antialias=True, align_corners=False),
                     *batch[1:])
        return batch

    def check_net(self, net: torch.nn.Module) -> None:
        """With progressive resizing on, the net must map (N, 1, size, size) to (N, 10) scores, as a net
        with global pooling does; one with a fixed-size head (s4's 7x7 conv, a flatten) is refused here."""
        if not self.progressive_epochs:
            return
        side = self.progressive_size
        try:
            shape = output_shape(net, side)
            got = None if shape == (PROBE_BATCH, 10) else f"it gave {shape} for N={PROBE_BATCH}"
        except (RuntimeError, ValueError) as e:
            got = f"it failed: {str(e).splitlines()[0]}"
        if got:
            raise ConfigError(f"data.progressive_size={side}: {bad_output(got, side)}; use a net with global "
                              "pooling, or data.progressive_epochs=0")

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")


def _with_transform(dataset: datasets.MNIST, transform) -> datasets.MNIST:
    """A shallow copy sharing the image tensors, with its own transform."""
    view = copy.copy(dataset)
    view.transform = transform
    return view
