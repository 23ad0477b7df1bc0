"""User nets for `model=custom` tests, reached through model.net._target_=tests.nets.<Class>."""
import torch
from torch import nn


class TinyConv(nn.Module):
    """All convolutions, returns raw logits (not log-probabilities): 2 convs + global average pool."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, stride=2), nn.ReLU(), nn.Conv2d(width, 10, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))


class RowReader(nn.Module):
    """A 28x1 kernel reads each column top to bottom, then the columns are averaged: it can learn the synthetic
    digits of tests/conftest.py (class k lights row band k), which a net that pools away the rows cannot."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, (28, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


class WithLinear(nn.Module):
    """A conv stem and a Linear head: refused unless budget.allow_fc=true."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, stride=4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 7 * 7, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)))


class WrongOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 7, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


class ConstantScores(nn.Module):
    """Ignores the image and favours class 0 by far: val acc is the same every epoch, so the best epoch
    (by strict improvement) is the first and every later epoch is not."""

    def __init__(self):
        super().__init__()
        self.scores = nn.Parameter(torch.tensor([20.0] + [0.0] * 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(len(x), 10)


class NaNScores(nn.Module):
    """Right shape, NaN values: the training loss is NaN at the first step."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1) * float("nan")


class ZetaFeatures(nn.Module):
    """Right shape, but Riemann's zeta has no ONNX form (opset 20): export must say so in one line."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.special.zeta(x.abs() + 2, torch.tensor(2.0))).flatten(1)
