"""MNIST: verified fetching (`fetch`) and the LightningDataModule (`datamodule`)."""
from mnist_arch.data.datamodule import MEAN, STD, MNISTDataModule
from mnist_arch.data.fetch import DataError, default_root, ensure_mnist

__all__ = ["MEAN", "STD", "DataError", "MNISTDataModule", "default_root", "ensure_mnist"]
