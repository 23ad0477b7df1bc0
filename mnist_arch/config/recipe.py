"""The optimizer and the lr scheduler, built from their config groups: no branch per name.

Each option of `conf/optimizer/` and `conf/scheduler/` names its class in `_target_`; every other key is
one of that class's arguments, except the few listed in NOT_ARGUMENTS, which say how the run uses it.
A new optimizer or scheduler is one YAML file (plus a schema field in config/schema.py if it brings a key no
other option has). Arguments the class does not take are refused when the config is validated.
"""
import bisect
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from mnist_arch.locate import arguments, locate

NOT_ARGUMENTS = {
    "_target_",  # the class
    "name",  # what tables and TensorBoard call it
    "decay_norm_and_bias",  # optimizer: weight decay on BN weights and biases too (default: conv/linear weights only)
    "interval",  # scheduler: step it every "epoch" or every "step" (batch)
    "monitor",  # scheduler: the metric it watches (ReduceLROnPlateau)
}


# What an optimizer's or scheduler's `_target_` must be a subclass of (a function there is refused).
OPTIMIZER_BASE = torch.optim.Optimizer
SCHEDULER_BASE = torch.optim.lr_scheduler.LRScheduler


def class_arguments(conf: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of an optimizer or scheduler config that go to its class (None: the class's default)."""
    return {k: v for k, v in conf.items() if k not in NOT_ARGUMENTS and v is not None}


def param_groups(net: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> List[Dict[str, Any]]:
    """Weight decay on conv and linear weights only: a decayed BN scale or bias shrinks what
    normalisation just restored and regularises nothing (the usual practice, e.g. nanoGPT's dim >= 2)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_optimizer(conf: Dict[str, Any], net: nn.Module) -> torch.optim.Optimizer:
    kwargs = class_arguments(conf)
    groups = param_groups(net, kwargs.pop("weight_decay", 0.0), conf.get("decay_norm_and_bias", False))
    return locate(conf["_target_"], "optimizer._target_", OPTIMIZER_BASE)(groups, **kwargs)


def build_scheduler(conf: Dict[str, Any], optimizer: torch.optim.Optimizer, total_batches: int,
                    max_epochs: int) -> Optional[Dict[str, Any]]:
    """Lightning's lr-scheduler dict, or None for a constant lr (`scheduler=none`: no _target_).
    A scheduler that takes `total_steps` and is not given it gets the run's length in its interval:
    `total_batches` optimizer steps (interval step) or `max_epochs` (interval epoch)."""
    if not conf.get("_target_"):
        return None
    cls = locate(conf["_target_"], "scheduler._target_", SCHEDULER_BASE)
    kwargs = class_arguments(conf)
    if "total_steps" in (arguments(cls) or []) and "total_steps" not in kwargs:
        kwargs["total_steps"] = total_batches if conf["interval"] == "step" else max_epochs
    if issubclass(cls, torch.optim.lr_scheduler.OneCycleLR) and \
            float(kwargs.get("pct_start", 0.3) * kwargs.get("total_steps", 0)) == 1.0:
        # OneCycleLR divides by the warm-up's length in steps minus one: a one-step warm-up (5 batches at
        # pct_start 0.2, as debug=limit can give) is a ZeroDivisionError. Half a step is no warm-up at all.
        kwargs["pct_start"] = 0.5 / kwargs["total_steps"]
    scheduler = {"scheduler": cls(optimizer, **kwargs), "interval": conf["interval"]}
    if conf.get("monitor"):
        scheduler["monitor"] = conf["monitor"]
    return scheduler


def piecewise_problem(milestones: Sequence[float], factors: Sequence[float]) -> Optional[str]:
    """What is wrong with a piecewise schedule (None: nothing); the config's gate and the class both ask."""
    if len(milestones) != len(factors) or len(milestones) < 2 or list(milestones) != sorted(milestones):
        return (f"scheduler.milestones={list(milestones)} must rise and pair up with scheduler.factors="
                f"{list(factors)} (two points at least)")
    return None


class PiecewiseLinearLR(torch.optim.lr_scheduler.LRScheduler):
    """lr = optimizer.lr x a factor interpolated linearly between (milestone, factor) points, held flat
    past the ends. Milestones count scheduler steps: epochs with interval=epoch (scheduler=piecewise).
    E.g. milestones [0, 2, 8, 12, 15], factors [0.5, 1, 0.1, 0.05, 0]: half the peak at epoch 1, the peak at
    epoch 3, then down to a tenth by epoch 9, a twentieth by 13, and zero at 16."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[float], factors: Sequence[float],
                 last_epoch: int = -1):
        problem = piecewise_problem(milestones, factors)
        if problem:
            raise ValueError(problem)
        self.milestones, self.factors = list(milestones), list(factors)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: float) -> float:
        m, f = self.milestones, self.factors
        if step <= m[0]:
            return f[0]
        if step >= m[-1]:
            return f[-1]
        i = bisect.bisect_right(m, step)
        return f[i - 1] + (f[i] - f[i - 1]) * (step - m[i - 1]) / (m[i] - m[i - 1])

    def get_lr(self) -> List[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
