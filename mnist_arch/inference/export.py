"""Ship a trained net: ONNX or TorchScript, checked against the PyTorch net before it is called done.

The command is mnist_arch/export.py (python -m mnist_arch.export); this is what it calls.
"""
import warnings
from pathlib import Path

import torch

from mnist_arch.errors import RunError

TOLERANCE = 1e-4  # max |exported - pytorch| on logits, float32
CHECK_BATCH = 64


def export_onnx(net: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    torch.onnx.export(net, (example,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError as e:
        raise RunError("checking an ONNX file needs onnxruntime: pip install 'mnist-arch[export]'") from e
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export_torchscript(net: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export; it still ships
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(net, example).save(str(out))


def run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))(x)


FORMATS = {"onnx": (".onnx", export_onnx, run_onnx), "torchscript": (".pt", export_torchscript, run_torchscript)}
