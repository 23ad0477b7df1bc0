"""s4: the "ConvReluBatchNorm" reference net (EVA5 session 4 write-up), replicated layer for layer.

17,120 trainable parameters. The write-up reports 99.42% on the official 10k test set ("validation")
at its best epoch within 10 epochs, one run. Measured here (`experiment=s4_reference`: SGD lr 0.01
momentum 0.9, batch 128, which the write-up does not state; seeds 1-5, val = 10k test set): best-epoch
99.32% ± 0.03, final-epoch 99.28% ± 0.06, no seed reaching 99.40%; on the holdout protocol, test acc
99.26% ± 0.11 (RESULTS.md).

Layout as written: 3 conv blocks, max-pool, a 1x1 conv block, 4 conv blocks, a bare 3x3 conv + BN,
log-softmax. The log-softmax is not in the net: the training loss (cross-entropy) applies it once, which
trains exactly as the write-up's log-softmax + NLL loss, so `forward` returns the logits. A block is
conv -> ReLU -> BN -> Dropout (ReLU before BN, as in the write-up); dropout is 0.15 except where the
write-up sets 0 (conv3, conv7, conv8). All convs are unpadded and keep their bias.

Comments give the output shape (C x H x W) and the receptive field (RF) on the 28 x 28 input.
"""
import torch
from torch import nn

from mnist_arch.models.registry import register


class ConvReluBatchNorm(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, dropout: float = 0.15):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, padding=0),
            nn.ReLU(),
            nn.BatchNorm2d(c_out),
            nn.Dropout(dropout),  # element-wise dropout, as in the write-up (not Dropout2d)
        )


@register("s4")
class S4(nn.Module):
    def __init__(self, dropout: float = 0.15):
        super().__init__()
        self.conv1 = ConvReluBatchNorm(1, 10, dropout=dropout)  # 10x26x26  RF 3
        self.conv2 = ConvReluBatchNorm(10, 14, dropout=dropout)  # 14x24x24  RF 5
        self.conv3 = ConvReluBatchNorm(14, 20, dropout=0.0)  # 20x22x22  RF 7
        self.pool1 = nn.MaxPool2d(2, 2)  # 20x11x11  RF 8   (jump 1 -> 2)
        self.conv4 = ConvReluBatchNorm(20, 10, kernel_size=1, dropout=dropout)  # 10x11x11  RF 8
        self.conv5 = ConvReluBatchNorm(10, 14, dropout=dropout)  # 14x9x9    RF 12
        self.conv6 = ConvReluBatchNorm(14, 16, dropout=dropout)  # 16x7x7    RF 16
        self.conv7 = ConvReluBatchNorm(16, 20, dropout=0.0)  # 20x5x5    RF 20
        self.conv8 = ConvReluBatchNorm(20, 24, dropout=0.0)  # 24x3x3    RF 24
        self.conv9 = nn.Conv2d(24, 10, 3, padding=0)  # 10x1x1    RF 28
        self.bnorm = nn.BatchNorm2d(10)  # 10x1x1    RF 28

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv3(self.conv2(self.conv1(x))))
        x = self.conv8(self.conv7(self.conv6(self.conv5(self.conv4(x)))))
        x = self.bnorm(self.conv9(x))
        return x.flatten(1)  # (N, 10) logits; the write-up's log-softmax is the loss's (see the docstring)
