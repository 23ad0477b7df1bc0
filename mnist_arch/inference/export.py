"""Ship a trained net: a torch.export program (.pt2), ONNX or TorchScript, checked against the PyTorch net
before it is called done; and a .pt2 read back as data.

The command is mnist_arch/export.py (python -m mnist_arch.export); this is what it calls.

A .pt2 from elsewhere is not safe to hand to `torch.export.load` as it is (torch 2.14): it unpickles weights
and constants marked `use_pickle` (torch.load with weights_only=False, or pickle.loads), retries the sample
inputs with weights_only=False when the safe load fails, turns the graph's symbolic-shape strings into
expressions with sympy.sympify (which evaluates Python), keeps `guards_code` (Python source run as guards) and
resolves a node's target as any attribute path under `torch`, `math` or `operator`. `read_pt2` therefore
reads the archive's JSON first and refuses, in one line, any of those it would not write itself: a pickled
payload, a custom or opaque object, sample inputs that need more than weights_only=True, guards code, a shape
expression beyond symbols, integers and arithmetic, or a node whose target is not an aten/prims op or an
`operator` function; only then does torch.export.load see it. The checkpoints' limits apply (size on disk,
zip records and what they declare: mnist_arch/models/build.py).
"""
import io
import json
import re
import warnings
import zipfile
from pathlib import Path

import torch

from mnist_arch.errors import BadFile, RunError

TOLERANCE = 1e-4  # max |exported - pytorch| on logits, float32
CHECK_BATCH = 64


ONNX_OPSET = 20  # what torch 2.14's exporter targets by default; onnxruntime 1.17+ runs it


def export_onnx(net: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    """Through torch's current exporter (torch.export, then onnxscript: dynamo=True), the batch size free."""
    try:
        import onnxscript  # noqa: F401 - the exporter needs it; say so before it fails inside torch
    except ImportError as e:
        raise RunError("ONNX export needs onnxscript: pip install 'mnist-arch[export]'") from e
    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.onnx.export(net.eval(), (example,), input_names=["images"], output_names=["logits"], dynamo=True,
                                dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, verbose=False)
    program.save(str(out))


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


def export_pt2(net: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    """torch.export's ExportedProgram, the batch dimension free (1 to 65,536 images)."""
    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()  # `out` is a temporary name (mnist_arch/files.py): torch warns at one not ending in .pt2
    torch.export.save(program, buffer)
    Path(out).write_bytes(buffer.getvalue())


def run_pt2(path: Path, x: torch.Tensor) -> torch.Tensor:
    return read_pt2(path)(x)


SAFE_TARGET = re.compile(r"(torch\.ops\.(aten|prims)\.\w+\.\w+|_operator\.\w+)")
SAFE_EXPR = re.compile(r"[\w\s+\-*/%(),=<>.']*")  # symbols, integers, arithmetic: sympy parses, nothing to call
SAFE_WORDS = {"Symbol", "Integer", "positive", "integer", "True", "False", "Mod", "FloorDiv", "Max", "Min"}


def read_pt2(path: Path) -> torch.nn.Module:
    """A .pt2 file's program as a module, read as data (see the module's docstring); BadFile, one line."""
    from mnist_arch.files import check_file
    from mnist_arch.models.build import MAX_CHECKPOINT_BYTES, check_records

    path = Path(path)
    check_file(path, "torch.export program (.pt2)", MAX_CHECKPOINT_BYTES)
    check_records(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            models = [n for n in names if re.fullmatch(r"[^/]+/models/[^/]+\.json", n)]
            if len(models) != 1:
                raise BadFile(f"{path}: not a .pt2 of one program ({len(models)} models in it)")
            root, model = models[0].split("/")[0], Path(models[0]).stem
            _check_program(path, json.loads(archive.read(models[0])))
            for kind in ("weights", "constants"):
                config = f"{root}/data/{kind}/model_{kind}_config.json"
                if config in names:
                    for key, payload in json.loads(archive.read(config)).get("config", {}).items():
                        if payload.get("use_pickle") or not str(payload.get("path_name", "")).startswith(
                                ("weight_", "tensor_")):
                            raise BadFile(f"{path}: refused: its {kind[:-1]} {key!r} is a pickled Python object, not "
                                          "a tensor")
            inputs = f"{root}/data/sample_inputs/{model}.pt"
            if inputs in names:
                torch.load(io.BytesIO(archive.read(inputs)), weights_only=True)  # never the unsafe retry
    except BadFile:
        raise
    except Exception as e:  # noqa: BLE001 - not a zip, bad JSON, a pickled object in the sample inputs: one line
        raise BadFile(f"{path}: not a readable .pt2 ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:  # noqa: BLE001
        raise BadFile(f"{path}: torch.export could not load it ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]})") from None


def _check_program(path: Path, program: dict) -> None:
    if program.get("guards_code"):
        raise BadFile(f"{path}: refused: it carries guards code (Python source run when the program is loaded)")
    graph = program["graph_module"]["graph"]
    if graph.get("custom_obj_values"):
        raise BadFile(f"{path}: refused: it holds custom objects, not only tensors")
    for node in graph["nodes"]:
        if not SAFE_TARGET.fullmatch(str(node.get("target", ""))):
            raise BadFile(f"{path}: refused: a node calls {str(node.get('target'))[:80]!r}, not an aten op")
    for expr in re.findall(r'"expr_str":\s*"((?:[^"\\]|\\.)*)"', json.dumps(program)):
        words = set(re.findall(r"[A-Za-z_]\w*", expr)) - SAFE_WORDS
        if not SAFE_EXPR.fullmatch(expr) or any(not re.fullmatch(r"[su]\d+", w) for w in words):
            raise BadFile(f"{path}: refused: a shape expression {expr[:60]!r} is more than symbols and arithmetic")


def why_not_exported(e: Exception) -> str:
    """One line for an exporter's failure: the ONNX exporter's own first line is a generic banner, so the op it
    found no ONNX function for is named instead, when its message names one."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if op:
        return f"no ONNX function for the op {op.group(1)} (the ONNX exporter, opset {ONNX_OPSET})"
    return f"{type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else '(no message)'}"


FORMATS = {"pt2": (".pt2", export_pt2, run_pt2), "onnx": (".onnx", export_onnx, run_onnx),
           "torchscript": (".pt", export_torchscript, run_torchscript)}
