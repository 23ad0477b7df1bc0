"""Architectures, one plain-PyTorch file each; importing this package registers them all."""
from mnist_arch.models import convnet, s4, s6  # noqa: F401  (imported for their @register side effect)
from mnist_arch.models.build import CUSTOM, TRUST_ENV, build_net
from mnist_arch.models.checkpoint import check_weights, net_from_checkpoint, read_checkpoint
from mnist_arch.models.registry import list_architectures, list_models, presets, register, unknown_model

__all__ = ["CUSTOM", "TRUST_ENV", "build_net", "check_weights", "list_architectures", "list_models",
           "net_from_checkpoint", "presets", "read_checkpoint", "register", "unknown_model"]
