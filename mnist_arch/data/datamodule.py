"""MNIST as a LightningDataModule: verified files in, normalised batches out.

Validation follows the references by default (`val="test"`: the official 10k test set is the
validation set). `val="holdout"` carves `holdout_size` images out of the 60k training set with a fixed
permutation (the same for every run seed), and the 10k test set is then touched only by the final test.
"""
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from mnist_arch.data.fetch import DataError, default_root, ensure_mnist

MEAN, STD = 0.1307, 0.3081  # of the 60k training images, pixels scaled to [0, 1]
HOLDOUT_SEED = 0  # fixed, so the holdout split does not move with the run's seed


class MNISTDataModule(pl.LightningDataModule):
    def __init__(
        self,
        root: Optional[str] = None,
        val: str = "test",
        holdout_size: int = 5000,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        rotation: float = 0.0,
        num_workers: int = 0,
        download: bool = True,
        fetch_timeout_s: float = 30.0,
        seed: int = 0,
    ):
        super().__init__()
        self.root = Path(root).expanduser() if root else default_root()
        self.val, self.holdout_size = val, holdout_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.rotation, self.num_workers = rotation, num_workers
        self.download, self.fetch_timeout_s, self.seed = download, fetch_timeout_s, seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    def prepare_data(self) -> None:
        ensure_mnist(self.root, download=self.download, timeout=self.fetch_timeout_s)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        # prepare_data runs on one process per node; every process re-checks before reading.
        ensure_mnist(self.root, download=False)
        normalise = [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
        augment = [transforms.RandomRotation(self.rotation, fill=0)] if self.rotation > 0 else []
        train_tf = transforms.Compose(augment + normalise)
        eval_tf = transforms.Compose(normalise)

        train_full = datasets.MNIST(self.root, train=True, transform=train_tf, download=False)
        self.test_set = datasets.MNIST(self.root, train=False, transform=eval_tf, download=False)
        if self.val == "test":
            self.train_set, self.val_set = train_full, self.test_set
            return
        n = len(train_full)
        if not 0 < self.holdout_size < n:
            raise DataError(f"data.holdout_size={self.holdout_size} must be between 1 and {n - 1}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED)).tolist()
        holdout_view = datasets.MNIST(self.root, train=True, transform=eval_tf, download=False)
        self.train_set = Subset(train_full, order[self.holdout_size:])
        self.val_set = Subset(holdout_view, order[: self.holdout_size])

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
