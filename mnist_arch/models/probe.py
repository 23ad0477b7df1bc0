"""A net run on a probe input without changing it: on its own device, in eval mode (BN on its running
statistics, dropout off), without gradients, and put back in the mode it was in. What the rules, the layer
table and TensorBoard's graph share."""
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def device_of(net: nn.Module) -> torch.device:
    """Where the net's parameters are (the CPU for a net without any)."""
    return next(net.parameters(), torch.zeros(0)).device


@contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """`with evaluating(net): net(x)`: eval mode and no grad inside, the net's own mode again after."""
    was_training = net.training
    try:
        with torch.no_grad():
            yield net.eval()
    finally:
        net.train(was_training)
