"""convnet: one configurable all-convolutional family, so an architecture is written in config, not code.

    python -m mnist_arch.run model=convnet model.net.stages=[[4,4,4],[8,8,8],[8,8,8]]
    python -m mnist_arch.layers model=public_9994           # a preset: conf/model/public_9994.yaml

A net is a list of stages; a stage is a list of 3x3 conv widths, each conv followed by BatchNorm and ReLU
(`order`: bn_relu or relu_bn), optionally closed by 1x1 convs (`transitions`, same BN + ReLU). A 2x2
max-pool (then `dropout`, if any) sits between stages. The head has no FC layer: global average pooling
and a 1x1 conv to the 10 classes (`head=gap_conv`), or the 1x1 conv first (`head=conv_gap`).

Padding is `same` (the map keeps its size) or `valid` (it shrinks by 2): one word for the whole net, one
per stage, or one per conv of a stage (`padding=[valid,[valid,valid,valid,same]]`). A shape that cannot
work (a width of 0, a map shrinking below 1x1 on the 28x28 input) is refused with the stage named.

`conv` is `full` (a 3x3 conv, 9·C_in·C_out weights) or `separable` (depthwise-separable: a 3x3 depthwise conv,
one filter per input channel, then a 1x1 pointwise conv; 9·C_in + C_in·C_out weights, so a budget buys much
wider layers), for the whole net or one word per stage. The block's BN and ReLU follow the pointwise conv,
with none between the two halves (Chollet 2017, Xception, found the intermediate ReLU hurts). The net's first
conv stays full whatever `conv` says: its input is one channel, where a depthwise conv is a single 3x3 filter.

This file has no per-layer shape comments because the shapes live in config: the layer table
(`python -m mnist_arch.layers model=...`) prints each layer's output shape, RF, jump and MACs, and is
saved as layers.txt by every run. Parameters: every conv before a BN needs no bias (`bias=false` drops
it, as BN's shift does that job); the class conv keeps one unless `class_bias=false`.
"""
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from mnist_arch.models.registry import register

INPUT_SIZE = 28
Padding = Union[str, Sequence[Union[str, Sequence[str]]]]


def _per_stage(key: str, value: Union[str, Sequence[str]], stages: Sequence[Sequence[int]],
               allowed: Sequence[str]) -> List[str]:
    """One word per stage, from one word or a list of one per stage."""
    words = [value] * len(stages) if isinstance(value, str) else list(value)
    if len(words) != len(stages) or any(w not in allowed for w in words):
        raise ValueError(f"model.net.{key}={value!r}: {' or '.join(allowed)}, once or once per stage "
                         f"({len(stages)} stages)")
    return words


def _paddings(padding: Padding, stages: Sequence[Sequence[int]]) -> List[List[str]]:
    """One word per conv, from one word, one per stage, or one list per stage."""
    if isinstance(padding, str):
        padding = [padding] * len(stages)
    if len(padding) != len(stages):
        raise ValueError(f"model.net.padding has {len(padding)} entries for {len(stages)} stages")
    per_conv = []
    for i, (pad, widths) in enumerate(zip(padding, stages)):
        pads = [pad] * len(widths) if isinstance(pad, str) else list(pad)
        if len(pads) != len(widths) or any(p not in ("same", "valid") for p in pads):
            raise ValueError(f"model.net.padding[{i}]={pad!r}: same or valid, once per stage or once per conv "
                             f"of its {len(widths)}")
        per_conv.append(pads)
    return per_conv


class ConvNet(nn.Module):
    def __init__(self, stages: Sequence[Sequence[int]] = ((8, 8), (16, 16), (16, 16)), padding: Padding = "same",
                 transitions: Optional[Sequence[Sequence[int]]] = None, bias: bool = False, class_bias: bool = True,
                 order: str = "bn_relu", dropout: float = 0.0, head: str = "gap_conv", num_classes: int = 10,
                 conv: Union[str, Sequence[str]] = "full"):
        super().__init__()
        if not stages or any(not isinstance(s, (list, tuple)) or not s for s in stages):
            raise ValueError(f"model.net.stages={stages!r}: a list of stages, each a non-empty list of conv widths")
        transitions = transitions or [[] for _ in stages]
        if len(transitions) != len(stages):
            raise ValueError(f"model.net.transitions has {len(transitions)} entries for {len(stages)} stages")
        if order not in ("bn_relu", "relu_bn") or head not in ("gap_conv", "conv_gap"):
            raise ValueError(f"model.net.order={order!r} must be bn_relu or relu_bn; model.net.head={head!r} "
                             "must be gap_conv or conv_gap")
        pads = _paddings(padding, stages)
        kinds = _per_stage("conv", conv, stages, ("full", "separable"))

        def block(c_in: int, c_out: int, kernel: int, pad: str, kind: str = "full") -> nn.Sequential:
            padding_ = 1 if pad == "same" and kernel == 3 else 0
            if kind == "separable" and kernel == 3 and c_in > 1:
                convs = [nn.Conv2d(c_in, c_in, 3, padding=padding_, groups=c_in, bias=False),  # depthwise
                         nn.Conv2d(c_in, c_out, 1, bias=bias)]  # pointwise
            else:
                convs = [nn.Conv2d(c_in, c_out, kernel, padding=padding_, bias=bias)]
            norm_act = [nn.BatchNorm2d(c_out), nn.ReLU()] if order == "bn_relu" else [nn.ReLU(), nn.BatchNorm2d(c_out)]
            return nn.Sequential(*convs, *norm_act)

        layers: List[nn.Module] = []
        channels, size = 1, INPUT_SIZE
        for i, (widths, stage_pads, closing, kind) in enumerate(zip(stages, pads, transitions, kinds)):
            if i > 0:  # between stages: halve the map
                size //= 2
                if size < 1:
                    raise ValueError(f"model.net.stages[{i}]: the max-pool before it shrinks the map below 1x1")
                layers += [nn.MaxPool2d(2)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            for j, (width, pad) in enumerate(zip(widths, stage_pads)):
                if not isinstance(width, int) or width < 1:
                    raise ValueError(f"model.net.stages[{i}][{j}]={width!r}: a conv needs a width of at least 1")
                size -= 2 if pad == "valid" else 0
                if size < 1:
                    raise ValueError(f"model.net.stages[{i}]: its conv {j + 1} (valid padding) shrinks the map "
                                     f"below 1x1 on the {INPUT_SIZE}x{INPUT_SIZE} input")
                layers.append(block(channels, width, 3, pad, kind))
                channels = width
            for j, width in enumerate(closing):
                if not isinstance(width, int) or width < 1:
                    raise ValueError(f"model.net.transitions[{i}][{j}]={width!r}: a 1x1 conv needs a width of at "
                                     "least 1")
                layers.append(block(channels, width, 1, "valid"))
                channels = width
        self.features = nn.Sequential(*layers)
        self.gap_first = head == "gap_conv"
        self.pool = nn.AdaptiveAvgPool2d(1)  # global average: every unit sees the whole map
        self.classes = nn.Conv2d(channels, num_classes, 1, bias=class_bias)  # a 1x1 conv, not a Linear layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classes(self.pool(x)) if self.gap_first else self.pool(self.classes(x))
        return x.flatten(1)  # (N, 10) logits


register("convnet")(ConvNet)
