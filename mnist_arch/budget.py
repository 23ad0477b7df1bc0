"""The rules of the game, as plain Lightning callbacks: parameter budget, no fully connected layer,
stop at the target accuracy. (The epoch budget is a config rule: see `Config.__post_init__`.)"""
from typing import List, Tuple

import pytorch_lightning as pl
import torch
from torch import nn

# Every layer type that is a fully connected layer in disguise; 1x1 convolutions are allowed.
FC_TYPES = (nn.Linear, nn.LazyLinear, nn.Bilinear)


class BudgetError(RuntimeError):
    """The net breaks a rule of the game; `status` is what summary.json records."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def largest_layers(net: nn.Module, k: int = 3) -> List[Tuple[str, int]]:
    sizes = [(name, sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad))
             for name, m in net.named_modules()]
    return sorted([s for s in sizes if s[1] > 0], key=lambda s: -s[1])[:k]


def fc_layers(net: nn.Module) -> List[str]:
    return [name or "(the net itself)" for name, m in net.named_modules() if isinstance(m, FC_TYPES)]


class RulesCheck(pl.Callback):
    """At fit start, before any step: output shape, parameter budget, no-FC rule."""

    def __init__(self, max_params: int, allow_fc: bool):
        self.max_params, self.allow_fc = max_params, allow_fc

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        params = count_params(net)
        if params > self.max_params:
            top = ", ".join(f"{name} {n:,}" for name, n in largest_layers(net))
            raise BudgetError("over_budget", f"{params:,} > {self.max_params:,} trainable parameters "
                                             f"(budget.max_params); largest layers: {top}")
        found = fc_layers(net)
        if found and not self.allow_fc:
            raise BudgetError("fc_not_allowed", f"fully connected layer(s) not allowed: {', '.join(found)} "
                                                "(1x1 convolutions are; budget.allow_fc=true lifts the rule)")
        was_training = net.training
        net.eval()
        with torch.no_grad():
            out = pl_module(torch.zeros(2, 1, 28, 28, device=pl_module.device))
        net.train(was_training)
        if tuple(out.shape) != (2, 10):
            raise BudgetError("bad_output", f"the net must map (N, 1, 28, 28) to (N, 10); it gave "
                                            f"{tuple(out.shape)} for N=2")


class StopAtTarget(pl.Callback):
    """Stop after the first epoch whose val acc >= target (inclusive, which EarlyStopping's strict
    `stopping_threshold` is not), through Lightning's own `trainer.should_stop`."""

    def __init__(self, target_acc: float):
        self.target_acc = target_acc

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = pl_module.history["val_acc"]
        if not trainer.sanity_checking and history and reached(history[-1], self.target_acc):
            trainer.should_stop = True


def reached(acc: float, target: float) -> bool:
    """acc >= target, immune to float32 noise (val accs are multiples of 1e-4 on 10k images)."""
    return round(acc, 6) >= round(target, 6)
