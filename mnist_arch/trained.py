"""A trained net, found from a run dir or a checkpoint file: what evaluate, predict and export share.

A run dir gives the checkpoint its test scored (`checkpoints/best.ckpt` when summary.json says the best
weights were tested, else `checkpoints/last.ckpt`); a `.ckpt` file is taken as it is. The net is rebuilt
from the checkpoint alone (`net_from_checkpoint`: its `net_spec`, loaded with weights_only=True).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from mnist_arch.data.device_loader import MEAN, STD
from mnist_arch.errors import ConfigError
from mnist_arch.models import net_from_checkpoint
from mnist_arch.record import FILE_NAME, RunRecord


@dataclass
class Trained:
    net: nn.Module  # eval mode, on the CPU
    checkpoint: Dict[str, Any]
    path: Path  # the .ckpt file
    run_dir: Optional[Path]  # the run it came from, when it sits in <run dir>/checkpoints/

    @property
    def name(self) -> str:
        return self.checkpoint["net_spec"]["name"]

    @property
    def out_dir(self) -> Path:
        """Where files about this net go: its run dir, else beside the checkpoint."""
        return self.run_dir or self.path.parent

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, 10) class probabilities for (N, 1, 28, 28) images with pixels in [0, 1]."""
        x = images.float().sub(MEAN).div(STD)
        return torch.cat([self.net(x[i:i + batch_size]).softmax(dim=1) for i in range(0, len(x), batch_size)])


def checkpoint_of(path: Union[str, Path]) -> Path:
    path = Path(path)
    if path.is_dir():
        record = RunRecord.read(path) if (path / FILE_NAME).is_file() else None
        name = "best.ckpt" if record is not None and record.test_ckpt == "best" else "last.ckpt"
        found = path / "checkpoints" / name
        if not found.is_file():
            raise ConfigError(f"{path}: no checkpoints/{name} in this run dir (a run with callbacks.checkpoint=false "
                              "keeps none)")
        return found
    if path.is_file():
        return path
    raise ConfigError(f"{path}: no such run dir or checkpoint file")


def load(path: Union[str, Path]) -> Trained:
    ckpt = checkpoint_of(path)
    net, checkpoint = net_from_checkpoint(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return Trained(net, checkpoint, ckpt, run_dir)
