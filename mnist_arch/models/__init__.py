"""Architectures, one plain-PyTorch file each; importing this package registers them all."""
from mnist_arch.models import convnet, s4, s6  # noqa: F401  (imported for their @register side effect)
from mnist_arch.models.build import CUSTOM, build_net, net_from_checkpoint
from mnist_arch.models.registry import build_model, list_models, register

__all__ = ["CUSTOM", "build_model", "build_net", "list_models", "net_from_checkpoint", "register"]
