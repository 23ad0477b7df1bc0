"""MNIST: verified fetching (`fetch`) and the LightningDataModule (`datamodule`)."""
from mnist_arch.data.datamodule import MNISTDataModule
from mnist_arch.data.device_loader import MEAN, STD, Augment, DeviceLoader
from mnist_arch.data.fetch import DataError, default_root, ensure_mnist

__all__ = ["MEAN", "STD", "Augment", "DataError", "DeviceLoader", "MNISTDataModule", "default_root", "ensure_mnist"]
