"""Per-run plots, saved as PNG under `<run dir>/plots/` and logged to TensorBoard's IMAGES tab.

- samples.png: the first training batch as the model sees it (after augmentation), with labels;
- curves.png: train/val loss and accuracy per epoch, with the target accuracy;
- kernels.png: the learned kernels of the first conv and of the last 3x3 conv (out channel per column,
  in channel per row, one colour scale per panel centred on 0);
- misclassified.png: validation images of the last epoch the net got wrong, predicted vs true label
  (under DDP: from rank 0's shard);
- confusion.png: the last epoch's validation confusion matrix.

Everything is collected from batches the run computes anyway (no extra pass over the data) and drawn
once, when training ends; the time spent is recorded as `plots_time_s` in summary.json.
`callbacks.plots=false` turns it off. Matplotlib's object API (no pyplot) keeps it free of GUI backends.
"""
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from mnist_arch.train.history import find_history

N_IMAGES = 36  # a 6 x 6 grid


class RunPlots(pl.Callback):
    def __init__(self, out_dir: Path, target_acc: float, val_split: str):
        self.out_dir, self.target_acc, self.val_split = Path(out_dir), target_acc, val_split
        self.samples: Optional[tuple] = None
        self.wrong: List[tuple] = []  # (image, predicted, true), at most N_IMAGES
        self.seconds = 0.0  # time spent here: collecting and drawing
        self.written: Dict[str, Path] = {}
        self.confusion: Optional[torch.Tensor] = None  # the last validation epoch's counts [true, predicted]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.samples is None:
            x, y = batch[0], batch[1]  # a third: a teacher's outputs computed once (mnist_arch/train/module.py)
            self.samples = (x[:N_IMAGES].detach().cpu(), y[:N_IMAGES].cpu())

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.wrong = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or outputs is None:
            return
        started = time.perf_counter()
        x, y = batch
        if len(self.wrong) < N_IMAGES:
            missed = (outputs != y).nonzero().flatten()[: N_IMAGES - len(self.wrong)]
            self.wrong += [(x[i].cpu(), int(outputs[i]), int(y[i])) for i in missed.tolist()]
        self.seconds += time.perf_counter() - started

    def on_train_end(self, trainer, pl_module) -> None:
        started = time.perf_counter()
        if not trainer.is_global_zero:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        history = find_history(trainer)
        epochs = len(history["val_acc"]) if history else 0
        figures = {"samples": self._samples(), "kernels": _kernels(pl_module.net),
                   "curves": _curves(history.epochs, self.target_acc) if history else None}
        # the last validation epoch's confusion matrix, summed over every rank's shard
        self.confusion = history.confusion if history else None
        if self.confusion is not None:
            where = f"val split: {self.val_split}, epoch {epochs}"
            figures["misclassified"] = self._misclassified(where)
            figures["confusion"] = _confusion(self.confusion, where)
        for name, figure in figures.items():
            if figure is None:
                continue
            path = self.out_dir / f"{name}.png"
            figure.savefig(path, dpi=80, pil_kwargs={"compress_level": 1})  # the fastest zlib level: ~20 ms a plot
            self.written[name] = path
            _log_image(trainer, f"plots/{name}", path)
        self.seconds += time.perf_counter() - started

    def _samples(self):
        if self.samples is None:
            return None
        x, y = self.samples
        return _grid(x, [str(int(label)) for label in y], "training samples as the model sees them")

    def _misclassified(self, where: str):
        if not self.wrong:
            return None
        images = torch.stack([w[0] for w in self.wrong])
        titles = [f"{p} (true {t})" for _, p, t in self.wrong]
        return _grid(images, titles, f"misclassified, predicted (true); first {len(self.wrong)} of {where}")


def _figure(width: float, height: float):
    return Figure(figsize=(width, height), layout="constrained")


def _grid(images: torch.Tensor, titles: List[str], title: str):
    """One image for the whole grid (one axes, not one per digit: drawing stays a fraction of a second)."""
    cols, side, gap = 6, images.shape[-1], 10  # the gap leaves room for each label above its digit
    rows = (len(images) + cols - 1) // cols
    mosaic = torch.full((rows * (side + gap), cols * (side + 2)), float("nan"))
    figure = _figure(cols * 1.1, rows * 1.3 + 0.3)
    ax = figure.add_subplot()
    for i, (image, label) in enumerate(zip(images, titles)):
        top, left = (i // cols) * (side + gap) + gap, (i % cols) * (side + 2)
        mosaic[top: top + side, left: left + side] = image[0].float()
        ax.text(left + side / 2, top - 1, label, ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic.numpy(), cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    return figure


def _curves(history: Dict[str, list], target_acc: float):
    epochs = range(1, len(history["val_acc"]) + 1)
    figure = _figure(8, 3)
    loss, acc = figure.subplots(1, 2)
    for ax, key, label in [(loss, "loss", "loss (NLL)"), (acc, "acc", "accuracy")]:
        for split, style in [("train", "-o"), ("val", "-s")]:
            values = history.get(f"{split}_{key}", [])[: len(epochs)]
            ax.plot(list(epochs)[: len(values)], values, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    acc.axhline(target_acc, color="gray", linestyle="--", linewidth=1, label=f"target {target_acc:.2%}")
    acc.legend(fontsize=7)
    return figure


def _kernels(net: nn.Module):
    """First conv and last 3x3 conv, by definition order (the summary's table shows the run order)."""
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    last3 = [(name, m) for name, m in convs if tuple(m.kernel_size) == (3, 3)]
    chosen = list(dict.fromkeys([convs[0], last3[-1]] if last3 else convs[:1])) if convs else []
    if not chosen:
        return None
    figure = _figure(4.5 * len(chosen), 4.5)
    for ax, (name, conv) in zip(figure.subplots(1, len(chosen), squeeze=False)[0], chosen):
        weight = conv.weight.detach().float().cpu()[:32, :32]  # at most 32 x 32 kernels
        out_c, in_c, kh, kw = weight.shape
        # Tile with a one-pixel NaN border between kernels (drawn blank): row = in channel, column = out.
        mosaic = torch.full((in_c * (kh + 1) - 1, out_c * (kw + 1) - 1), float("nan"))
        for o in range(out_c):
            for i in range(in_c):
                mosaic[i * (kh + 1): i * (kh + 1) + kh, o * (kw + 1): o * (kw + 1) + kw] = weight[o, i]
        limit = weight.abs().max().item() or 1.0
        image = ax.imshow(mosaic.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{name}: {tuple(conv.weight.shape)}", fontsize=8)
        ax.set_xlabel("out channel", fontsize=7)
        ax.set_ylabel("in channel", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.colorbar(image, ax=ax, shrink=0.6)
    return figure


def _confusion(counts: torch.Tensor, where: str):
    figure = _figure(5, 4.6)
    ax = figure.add_subplot()
    shade = counts.float().log1p()  # log scale, so the few off-diagonal counts still show
    ax.imshow(shade.numpy(), cmap="Blues")
    for t in range(10):
        for p in range(10):
            if counts[t, p]:
                ax.text(p, t, str(int(counts[t, p])), ha="center", va="center", fontsize=6,
                        color="white" if shade[t, p] > shade.max() / 2 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = counts.diag().sum().item() / max(1, counts.sum().item())
    ax.set_title(f"confusion ({where}; acc {accuracy:.2%})", fontsize=8)
    return figure


def _log_image(trainer, tag: str, path: Path) -> None:
    # PIL, not torchvision.io: torchvision 0.29 deprecates its image decoding
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, pixels, trainer.global_step, dataformats="HWC")
