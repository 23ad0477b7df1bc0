"""Architectures, one plain-PyTorch file each; importing this package registers them all."""
from mnist_arch.models import frontier, s4, s6  # noqa: F401  (imported for their @register side effect)
from mnist_arch.models.registry import build_model, list_models, register

__all__ = ["build_model", "list_models", "register"]
