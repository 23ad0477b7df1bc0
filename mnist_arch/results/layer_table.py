"""The layer table: what each layer outputs, what it costs, and how far back into the image it sees.
Printed by `python -m mnist_arch.layers` (mnist_arch/commands/layers.py) and at the start of every run, which
saves it as `layers.txt` in its run dir.

One row per layer call, in the order the forward pass runs them (a module called three times gives
three rows). Receptive field (RF, in input pixels) and jump (the distance in input pixels between two
neighbouring output units, i.e. the product of the strides so far) follow the usual recurrences

    RF_out = RF_in + (k - 1) * dilation * jump_in        jump_out = jump_in * stride

for convolutions and pools; other layers keep them. They are computed analytically by following each
tensor from layer to layer, and the final one is cross-checked by `empirical_rf`: the input region
where the gradient of one output unit is non-zero. MACs are the multiply-accumulates per image of the
conv and linear layers (BN, activations and pooling are element-wise and left out).
"""
import copy
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from mnist_arch.config.schema import Budget
from mnist_arch.models.probe import device_of, evaluating
from mnist_arch.rules import Verdict, count_params, judge_net, mark

INPUT_SHAPE = (1, 28, 28)


@dataclass
class Layer:
    name: str
    kind: str  # the module's class name
    geometry: str  # "k3 s2 p1" for convs and pools ("k3 s1 p1 dw": depthwise; "g4": 4 groups), "" for the rest
    shape: Tuple[int, ...]  # output shape of one image (no batch dim)
    params: int  # this layer's own trainable parameters (0 for a repeated call)
    rf: Optional[int]  # receptive field in input pixels; None once the output is no longer a feature map
    jump: Optional[int]
    macs: int  # multiply-accumulates per image


def layer_table(net: nn.Module, input_shape: Sequence[int] = INPUT_SHAPE) -> List[Layer]:
    """Run one image through `net` (eval mode, no grad) with hooks on every leaf module."""
    rows: List[Layer] = []
    seen = set()  # modules already given their parameters (a module may be called more than once)
    # Each module output's (RF, jump), keyed by tensor id; the outputs are kept alive in `keep`, so no
    # id is reused during the pass. An input made by a functional op between modules (F.relu(x), x + y)
    # is unknown: it inherits the previous layer's output's values, which is right for a chain.
    first = torch.zeros(1, *input_shape, device=device_of(net))
    known, keep, last = {id(first): (1, 1)}, [first], [(1, 1)]

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            rf, jump = known.get(id(x), last[0]) if x is not None else last[0]
            geometry = ""
            if output.dim() != 4 or rf is None:
                rf = jump = None
            elif x is not None and x.dim() == 4:
                (k, s, d), geometry = _geometry(module, x, output)
                rf, jump = rf + (k - 1) * d * jump, jump * s
            params = 0 if id(module) in seen else count_params(module)
            seen.add(id(module))
            rows.append(Layer(name, type(module).__name__, geometry, tuple(output.shape[1:]), params, rf, jump,
                              _macs(module, x, output)))
            known[id(output)] = last[0] = (rf, jump)
            keep.append(output)
        return hook

    leaves = [(name, m) for name, m in net.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(record(name or type(m).__name__)) for name, m in leaves]
    try:
        with evaluating(net):  # eval: BN on a batch of one, dropout off
            net(first)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def _geometry(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> Tuple[Tuple[int, int, int], str]:
    """(kernel, stride, dilation) along the height, and how the row shows them."""
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size_in, size_out = x.shape[-2], out.shape[-2]
        k, s = math.ceil(size_in / size_out), size_in // size_out
        return (k, s, 1), f"k{k} s{s} (adaptive)"
    if not hasattr(module, "kernel_size"):
        return (1, 1, 1), ""
    k, s, p = (_first(getattr(module, a)) for a in ("kernel_size", "stride", "padding"))
    d = _first(getattr(module, "dilation", 1))
    groups = getattr(module, "groups", 1)
    grouped = (" dw" if groups == module.in_channels == module.out_channels else f" g{groups}") if groups > 1 else ""
    return (k, s, d), f"k{k} s{s} p{p}" + (f" d{d}" if d != 1 else "") + grouped  # dw: depthwise


def _first(value) -> int:
    return value[0] if isinstance(value, (tuple, list)) else value


def _macs(module: nn.Module, x: Optional[torch.Tensor], out: torch.Tensor) -> int:
    per_image = out[0].numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        return per_image * module.in_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    if isinstance(module, nn.Bilinear):
        return per_image * module.in1_features * module.in2_features
    return 0


class _Reached(Exception):
    """Raised by the probe hook to end the forward pass at the probed layer."""


def empirical_rf(net: nn.Module, layer: str, sizes: Sequence[int] = (64, 128, 256)) -> Optional[int]:
    """The RF of the centre unit of `layer`'s output (first call), measured: the height of the input
    region where that unit's gradient is non-zero.

    A copy of the net is made so that no path is cut: conv/linear weights become equal positive values,
    biases 0, BN the identity, max-pools become average pools of the same geometry (a max passes the
    gradient to one input only). The input grows until the region is clear of the border, so it is not
    clipped by the image; the net only has to run up to `layer`. None when no size leaves it clear.
    """
    probe = copy.deepcopy(net).double().eval()
    for name, module in list(probe.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            _replace(probe, name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode))
        elif isinstance(module, nn.AdaptiveMaxPool2d):
            _replace(probe, name, nn.AdaptiveAvgPool2d(module.output_size))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()  # running mean 0, var 1, weight 1, bias 0: a positive scale
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.constant_(module.weight, 1.0 / module.weight[0].numel())
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    target = dict(probe.named_modules())[layer]

    def stop(module, inputs, output):
        raise _Reached(output)

    handle = target.register_forward_hook(stop)
    try:
        for size in sizes:
            x = torch.ones(1, INPUT_SHAPE[0], size, size, dtype=torch.double, requires_grad=True)
            out = None
            try:
                probe(x)
            except _Reached as reached:
                out = reached.args[0]
            if out is None or out.dim() != 4:  # the layer did not run, or is not a feature map
                return None
            out[0, 0, out.shape[-2] // 2, out.shape[-1] // 2].backward()
            rows = x.grad[0].abs().sum(dim=(0, 2)).nonzero().flatten()
            if len(rows) and 0 < rows.min() and rows.max() < size - 1:
                return int(rows.max() - rows.min() + 1)
        return None
    finally:
        handle.remove()


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def torch_macs(net: nn.Module, input_shape: Sequence[int] = INPUT_SHAPE) -> Optional[int]:
    """Multiply-accumulates of one image as torch's FlopCounterMode counts them (its FLOPs / 2), as a
    cross-check of the table's own count; None when the net cannot be run under it."""
    # Deferred: the counter imports triton, 0.1 s that `search --help` and `layers --help` need not pay
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with evaluating(net), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, *input_shape, device=device_of(net)))
        return counter.get_total_flops() // 2
    except Exception:  # noqa: BLE001 - a cross-check only
        return None


def format_table(rows: List[Layer], verdict: Verdict, measured_rf: Optional[int] = None,
                 macs_by_torch: Optional[int] = None) -> str:
    """The table, its totals and the budget checks, as printed by the CLI and at the start of a run."""
    header = ("layer", "type", "geometry", "output", "params", "RF", "jump", "MACs")
    lines = [(r.name, r.kind, r.geometry, "x".join(map(str, r.shape)), f"{r.params:,}",
              "" if r.rf is None else str(r.rf), "" if r.jump is None else str(r.jump), f"{r.macs:,}")
             for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    right = {4, 5, 6, 7}  # numbers align right
    text = [" ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in [header, *lines]]
    text.insert(1, "-" * len(text[0]))

    totals = totals_of(rows)
    rf = f"final RF {totals['receptive_field']}" if totals["receptive_field"] else "no feature-map output"
    if measured_rf is not None:
        rf += f" (measured {measured_rf} {mark(measured_rf == totals['receptive_field'])})"
    macs = f"{totals['macs_per_image']:,} MACs per image"
    if macs_by_torch is not None:
        macs += f" (torch's FlopCounterMode: {macs_by_torch:,} {mark(macs_by_torch == totals['macs_per_image'])}"
        if macs_by_torch != totals["macs_per_image"]:
            macs += ("; it also counts matrix products outside conv and linear modules (functional ops, "
                     "attention), which this table leaves out")
        macs += ")"
    text += ["", f"total: {verdict.params:,} trainable params · {macs} · {rf}",
             *verdict.lines()]
    return "\n".join(text)


def totals_of(rows: List[Layer]) -> dict:
    """MACs per image, and the RF and jump of the last layer that outputs a feature map."""
    spatial = [r for r in rows if r.rf is not None]
    return {"macs_per_image": sum(r.macs for r in rows),
            "receptive_field": spatial[-1].rf if spatial else None,
            "receptive_field_layer": spatial[-1].name if spatial else None}


def scores_clipped_at_zero(net: nn.Module, images: int = 16) -> bool:
    """Whether the net's scores come out of a ReLU (a module or an F.relu: s6's write-up ends in one), told from
    what it does: on random images no score is below 0, and some class scores 0 for some images and more for
    others. Such a class gets no gradient from the images where it is 0, and may never be predicted."""
    was_training = net.training
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            scores = net.eval()(torch.randn(images, *INPUT_SHAPE, generator=generator).to(device_of(net))).float()
    finally:
        net.train(was_training)
    return bool((scores >= 0).all() and ((scores == 0).any(dim=0) & (scores > 0).any(dim=0)).any())


def describe(net: nn.Module, budget: Budget) -> Tuple[str, dict, Verdict]:
    """(the printed table, the totals for summary.json, the rules' verdict on the net), with the final
    RF measured as a cross-check."""
    rows = layer_table(net)
    totals = totals_of(rows)
    measured = None
    if totals["receptive_field_layer"]:
        try:
            measured = empirical_rf(net, totals["receptive_field_layer"])
        except Exception:  # noqa: BLE001 - a cross-check only: a net the probe cannot run just goes unmeasured
            measured = None
    verdict = judge_net(net, budget, macs=totals["macs_per_image"])
    totals.update(receptive_field_measured=measured, logits_after_relu=scores_clipped_at_zero(net))
    return format_table(rows, verdict, measured, torch_macs(net)), totals, verdict
