"""The rules of the game in one place: the budget, and one judgement of a net and a run against it.

    verdict = judge(budget, params=17_120, fc=[], output_shape=(2, 10), val_acc=[0.98, 0.994])
    verdict.checks()    # {"params_ok": True, "no_fc_ok": True, "output_ok": True, "epochs_ok": True, "target_ok": True}
    verdict.failure()   # None, or (status, message) for the first rule a net breaks before training
    verdict.lines()     # the ✓/✗ lines of the layer table
    verdict.headline()  # "17,120 params ✓ ≤20,000 · no FC ✓ · 99.40% at epoch 2 ✓ (target 99.40%, ...)"

The callbacks (refuse before any step, stop at target), the layer table, the run's headline and
`summary.json` all ask `judge`; nothing else decides whether a rule holds or how the verdict reads. The
budget itself is a group of the config (mnist_arch/config/schema.py, conf/budget/).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mnist_arch.config.schema import Budget
from mnist_arch.errors import BudgetError
from mnist_arch.models.probe import device_of, evaluating

# Every layer type that is a fully connected layer in disguise; 1x1 convolutions are allowed.
FC_TYPES = (nn.Linear, nn.LazyLinear, nn.Bilinear)
PROBE_BATCH = 2  # images in the output-shape probe


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def largest_layers(net: nn.Module, k: int = 3) -> List[Tuple[str, int]]:
    sizes = [(name, sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad))
             for name, m in net.named_modules()]
    return sorted([s for s in sizes if s[1] > 0], key=lambda s: -s[1])[:k]


def fc_layers(net: nn.Module) -> List[str]:
    return [name or "(the net itself)" for name, m in net.named_modules() if isinstance(m, FC_TYPES)]


def output_shape(net: nn.Module, side: int = 28) -> Tuple[int, ...]:
    """What the net gives for a batch of PROBE_BATCH zero side x side images (eval mode, no grad)."""
    with evaluating(net):
        return tuple(net(torch.zeros(PROBE_BATCH, 1, side, side, device=device_of(net))).shape)


def bad_output(got: str, side: int = 28) -> str:
    """The one statement of the output rule, with what the net did instead."""
    return f"the net must map (N, 1, {side}, {side}) to (N, 10); {got}"


def reached(acc: float, target: float) -> bool:
    """acc >= target, immune to float32 noise (val accs are multiples of 1e-4 on 10k images)."""
    return round(acc, 6) >= round(target, 6)


def mark(ok: Optional[bool]) -> str:
    return "✓" if ok else "✗"


@dataclass
class Verdict:
    """What `judge` found. A field left None was not judged (no net to probe, no epoch run yet)."""

    budget: Budget
    params: int
    fc: List[str]
    output_shape: Optional[Tuple[int, ...]] = None
    val_acc: Optional[List[float]] = None  # per epoch; None before training
    largest: List[Tuple[str, int]] = field(default_factory=list)  # for the over-budget message
    macs: Optional[int] = None  # per image; None when not counted

    @property
    def params_ok(self) -> bool:
        return self.params <= self.budget.max_params

    @property
    def macs_ok(self) -> Optional[bool]:
        """None when the budget sets no MACs limit (or the MACs were not counted)."""
        if self.budget.max_macs is None or self.macs is None:
            return None
        return self.macs <= self.budget.max_macs

    @property
    def no_fc_ok(self) -> bool:
        return self.budget.allow_fc or not self.fc

    @property
    def output_ok(self) -> Optional[bool]:
        return None if self.output_shape is None else tuple(self.output_shape) == (PROBE_BATCH, 10)

    @property
    def epochs_ok(self) -> Optional[bool]:
        """The epochs actually run (a resumed run brings its past ones) within budget.max_epochs."""
        return None if self.val_acc is None else len(self.val_acc) <= self.budget.max_epochs

    @property
    def target_epoch(self) -> Optional[int]:
        """The first epoch (1-based) whose val acc reached the target within the epoch budget."""
        hits = [i + 1 for i, acc in enumerate(self.val_acc or []) if reached(acc, self.budget.target_acc)]
        return hits[0] if hits and hits[0] <= self.budget.max_epochs else None

    def checks(self) -> Dict[str, Optional[bool]]:
        """summary.json's `verdict`."""
        checks = {"params_ok": self.params_ok, "no_fc_ok": self.no_fc_ok, "output_ok": self.output_ok,
                  "epochs_ok": self.epochs_ok,
                  "target_ok": None if self.val_acc is None else self.target_epoch is not None}
        return {**checks, "macs_ok": self.macs_ok} if self.macs_ok is not None else checks

    def failure(self) -> Optional[Tuple[str, str]]:
        """(status, message) for the first rule the net breaks before training; None if it may train."""
        b = self.budget
        if not self.params_ok:
            top = ", ".join(f"{name} {n:,}" for name, n in self.largest)
            return "over_budget", (f"{self.params:,} > {b.max_params:,} trainable parameters (budget.max_params)"
                                   + (f"; largest layers: {top}" if top else ""))
        if self.macs_ok is False:
            return "over_budget", f"{self.macs:,} > {b.max_macs:,} MACs per image (budget.max_macs)"
        if not self.no_fc_ok:
            return "fc_not_allowed", (f"fully connected layer(s) not allowed: {', '.join(self.fc)} "
                                      "(1x1 convolutions are; budget.allow_fc=true lifts the rule)")
        if self.output_ok is False:
            return "bad_output", bad_output(f"it gave {self.output_shape} for N={PROBE_BATCH}")
        return None

    def lines(self) -> List[str]:
        """The budget checks under the layer table."""
        b = self.budget
        fc = "FC layers: " + (", ".join(self.fc) if self.fc else "none")
        lines = [f"params: {self.params:,} ≤ {b.max_params:,} {mark(self.params_ok)} (budget.max_params)",
                 fc + ("" if b.allow_fc else f" {mark(self.no_fc_ok)} (budget.allow_fc=false)")]
        if self.macs_ok is not None:
            lines.insert(1, f"MACs: {self.macs:,} ≤ {b.max_macs:,} {mark(self.macs_ok)} (budget.max_macs)")
        if self.output_shape is not None:
            lines.append(f"output for {PROBE_BATCH} images: {tuple(self.output_shape)} {mark(self.output_ok)} "
                         f"(must be ({PROBE_BATCH}, 10))")
        return lines

    def headline(self) -> str:
        """e.g. "17,120 params ✓ ≤20,000 · no FC ✓ · 99.42% at epoch 9 ✓ (target 99.40%, ≤20 epochs, 9 run"
        (the run's headline closes the parenthesis with what only the run knows)."""
        b, val_acc = self.budget, self.val_acc or []
        fc = "FC allowed" if b.allow_fc else f"no FC {mark(self.no_fc_ok)}"
        epoch = self.target_epoch
        if epoch is not None:
            acc = f"{val_acc[epoch - 1]:.2%} at epoch {epoch} ✓"
        elif val_acc:
            best = best_epoch(val_acc)
            acc = f"best {val_acc[best - 1]:.2%} at epoch {best} ✗"
        else:
            acc = "no validation epoch ran ✗"
        return (f"{self.params:,} params {mark(self.params_ok)} ≤{b.max_params:,} · {fc} · {acc} "
                f"(target {b.target_acc:.2%}, ≤{b.max_epochs} epochs, {len(val_acc)} run")


def best_epoch(val_acc: Sequence[float]) -> Optional[int]:
    """The epoch (1-based) of the highest val acc, the earliest of ties; None before any epoch."""
    return max(range(len(val_acc)), key=lambda i: (val_acc[i], -i)) + 1 if val_acc else None


def judge(budget: Budget, params: int, fc: Sequence[str], output_shape: Optional[Sequence[int]] = None,
          val_acc: Optional[Sequence[float]] = None, largest: Sequence[Tuple[str, int]] = (),
          macs: Optional[int] = None) -> Verdict:
    return Verdict(budget, params, list(fc), None if output_shape is None else tuple(output_shape),
                   None if val_acc is None else list(val_acc), list(largest), macs)


def judge_net(net: nn.Module, budget: Budget, val_acc: Optional[Sequence[float]] = None,
              macs: Optional[int] = None) -> Verdict:
    """Judge a net in hand: counts its parameters, finds its FC layers, probes its output shape; `macs`
    per image (the layer table's count) is judged when the budget limits them."""
    try:
        shape = output_shape(net)
    except Exception as e:  # noqa: BLE001 - a net that cannot run on a 28x28 image breaks the output rule
        raise BudgetError("bad_output", bad_output(f"it failed on ({PROBE_BATCH}, 1, 28, 28): {type(e).__name__}: "
                                                   f"{e}")) from e
    return judge(budget, count_params(net), fc_layers(net), shape, val_acc, largest_layers(net), macs)
