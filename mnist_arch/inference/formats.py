"""Ship a trained net: a torch.export program (.pt2), ONNX or TorchScript, checked against the PyTorch net
before it is called done; and a .pt2 read back, when it is trusted.

The command is mnist_arch/commands/export.py (python -m mnist_arch.export); this is what it calls.

A .pt2 is a program, not data. `torch.export.load` unpickles what the archive marks for pickling (under any
model name), retries legacy weights with weights_only=False, dlopens native code under data/aotinductor/,
turns shape strings into expressions with sympy (which evaluates Python) and runs whatever aten ops the graph
names, file-writing ones included. Four allowlists of the archive's contents were each got round (issue
45), so the rule is trust, as for a checkpoint's custom class: `read_pt2` opens a .pt2 only when the user
names it, by path or by sha256 (`--trust-program`; `export` prints the sha256 of each .pt2 it writes), and
refuses any other in one line before torch or zipfile sees the file. The bytes that were hashed are the
bytes loaded (read once into memory), so the file cannot be swapped in between.

A trusted program is still checked where a mistake costs the machine rather than the user's judgement: the
checkpoints' limits (size on disk, zip records), a pickled payload or guards code refused, every shape
expression only symbols, small integers and arithmetic (no powers: `9**9**9` never reaches sympy), every
integer size in the graph at most MAX_PROGRAM_ELEMENTS before anything runs, and its output on two blank
digits a (2, 10) tensor of logits.
"""
import hashlib
import io
import json
import math
import re
import warnings
import zipfile
from pathlib import Path
from typing import Collection

import torch

from mnist_arch.errors import BadFile, RunError
from mnist_arch.files import MAX_CHECKPOINT_BYTES, check_file
from mnist_arch.models.checkpoint import check_records

TOLERANCE = 1e-4  # max |exported - pytorch| on logits, float32
CHECK_BATCH = 64


ONNX_OPSET = 20  # what torch 2.14's exporter targets by default; onnxruntime 1.17+ runs it


def export_onnx(net: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    """Through torch's current exporter (torch.export, then onnxscript: dynamo=True), the batch size free."""
    try:  # deferred: an optional dependency (the export extra); the exporter needs it, said before torch fails
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise RunError("ONNX export needs onnxscript: pip install 'mnist-arch[export]'") from e
    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.onnx.export(net.eval(), (example,), input_names=["images"], output_names=["logits"], dynamo=True,
                                dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, verbose=False)
    program.save(str(out))


def run_onnx(path: Path, x: torch.Tensor, digest: str) -> torch.Tensor:
    try:  # deferred: an optional dependency (the export extra)
        import onnxruntime
    except ImportError as e:
        raise RunError("checking an ONNX file needs onnxruntime: pip install 'mnist-arch[export]'") from e
    data = trusted_bytes(path, [digest], "ONNX file", NOT_WRITTEN_HERE)  # onnxruntime parses only those bytes
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export_torchscript(net: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export; it still ships
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(net, example).save(str(out))


def run_torchscript(path: Path, x: torch.Tensor, digest: str) -> torch.Tensor:
    """The TorchScript file export just wrote, run on x: a program, so loaded only as the bytes of that digest."""
    data = trusted_bytes(path, [digest], "TorchScript file", NOT_WRITTEN_HERE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data))(x)


def export_pt2(net: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    """torch.export's ExportedProgram, the batch dimension free (1 to 65,536 images)."""
    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()  # `out` is a temporary name (mnist_arch/files.py): torch warns at one not ending in .pt2
    torch.export.save(program, buffer)
    Path(out).write_bytes(buffer.getvalue())


def run_pt2(path: Path, x: torch.Tensor, digest: str) -> torch.Tensor:
    """The file export just wrote, trusted by the digest of the bytes it wrote."""
    return read_pt2(path, trust=[digest])(x)


TRUST_OPTION = "--trust-program"
MAX_PROGRAM_ELEMENTS = 1 << 24  # any integer size in a trusted program's graph: 16M elements (64 MB of float32)
SAFE_TARGET = re.compile(r"(torch\.ops\.(aten|prims)\.\w+\.\w+|_operator\.\w+)")
UNSAFE_TARGET = re.compile(r"torch\.ops\.aten\.from_file\.\w+")  # maps (and writes) any file
SAFE_EXPR = re.compile(r"[\w\s+\-/%(),=<>.']*")  # symbols, integers, arithmetic; no `*` here (see _check_program)
SAFE_WORDS = {"Symbol", "Integer", "positive", "integer", "True", "False", "Mod", "FloorDiv", "Max", "Min"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


NOT_WRITTEN_HERE = "not the file export just wrote (another process changed it): export again"


def trusted_bytes(path: Path, trust: Collection[str], what: str, why: str) -> bytes:
    """The bytes of the file at `path` when `trust` names it, by its path or its sha256; BadFile (`why`, one line)
    otherwise, before anything parses it. Read once: the bytes hashed are the bytes the caller loads, so the file
    cannot be swapped in between. Every program format this project opens (.pt2, TorchScript, ONNX) comes
    through here."""
    path = Path(path)
    check_file(path, what, MAX_CHECKPOINT_BYTES)
    data = path.read_bytes()
    digest = sha256(data)
    named = {str(Path(t).expanduser().resolve()) for t in trust if not _is_digest(t)}
    if digest not in {t.lower() for t in trust if _is_digest(t)} and str(path.resolve()) not in named:
        raise BadFile(f"{path}: {why} (its sha256: {digest})")
    return data


def read_pt2(path: Path, trust: Collection[str] = ()) -> torch.nn.Module:
    """A .pt2 file's program as a module, when `trust` names it (its path or its sha256; see the module's
    docstring); BadFile, one line, for one that is not trusted or not a program this project would run."""
    path = Path(path)
    data = trusted_bytes(path, trust, "torch.export program (.pt2)",
                         f"a .pt2 is a program (torch.export runs the code it holds), read only when you trust it: "
                         f"add {TRUST_OPTION} {path} if you made it or trust who did")

    check_records(io.BytesIO(data), path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            models = [n for n in names if re.fullmatch(r"[^/]+/models/[^/]+\.json", n)]
            if len(models) != 1:
                raise BadFile(f"{path}: not a .pt2 of one program ({len(models)} models in it)")
            _check_program(path, json.loads(archive.read(models[0])))
            for name in names:
                if re.fullmatch(r"[^/]+/data/(weights|constants)/[^/]+_config\.json", name):
                    _check_payloads(path, json.loads(archive.read(name)))
                elif re.search(r"/data/aotinductor/|\.(so|dll|dylib)$", name):
                    raise BadFile(f"{path}: refused: it carries native code ({name[:80]})")
                elif re.fullmatch(r"[^/]+/data/(weights|constants)/[^/]+\.pt", name):
                    raise BadFile(f"{path}: refused: a legacy pickled record ({name[:80]}), which torch would "
                                  "unpickle unsafely")
                elif re.fullmatch(r"[^/]+/data/sample_inputs/[^/]+\.pt", name):  # torch retries these unsafely
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
    except BadFile:
        raise
    except Exception as e:  # noqa: BLE001 - not a zip, bad JSON: one line
        raise BadFile(f"{path}: not a readable .pt2 ({type(e).__name__}: {_first_line(e)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the archive's versions: nothing a user can act on
            net = torch.export.load(io.BytesIO(data)).module()
        with torch.no_grad():
            out = net(torch.zeros(2, 1, 28, 28))
    except Exception as e:  # noqa: BLE001
        raise BadFile(f"{path}: torch.export could not load and run it ({type(e).__name__}: {_first_line(e)})") \
            from None
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 10) and out.is_floating_point()):
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadFile(f"{path}: its program gives {what} for 2 digits, not (2, 10) logits")
    return net


def _is_digest(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F]{64}", text))


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def _check_payloads(path: Path, config: dict) -> None:
    """A weights or constants config: every payload a raw tensor file, none pickled."""
    for key, payload in (config.get("config") or {}).items():
        if not isinstance(payload, dict) or payload.get("use_pickle") or not re.fullmatch(
                r"(weight|tensor)_\d+", str(payload.get("path_name", ""))):
            raise BadFile(f"{path}: refused: its payload {str(key)[:60]!r} is a pickled Python object, not a tensor")


def _check_program(path: Path, program: dict) -> None:
    if program.get("guards_code"):
        raise BadFile(f"{path}: refused: it carries guards code (Python source run when the program is loaded)")
    graph = program["graph_module"]["graph"]
    if graph.get("custom_obj_values"):
        raise BadFile(f"{path}: refused: it holds custom objects, not only tensors")
    for node in graph["nodes"]:
        target = str(node.get("target", ""))
        if not SAFE_TARGET.fullmatch(target) or UNSAFE_TARGET.fullmatch(target):
            raise BadFile(f"{path}: refused: a node calls {target[:80]!r}, not an aten op this project runs")
    text = json.dumps(program)
    for expr in re.findall(r'"expr_str":\s*"((?:[^"\\]|\\.)*)"', text):
        words = set(re.findall(r"[A-Za-z_]\w*", expr)) - SAFE_WORDS
        # a product is written `a*b`; a power `**` is refused, and so is any integer of over 12 digits: sympy
        # would evaluate 9**9**9 for ever
        if not SAFE_EXPR.fullmatch(expr.replace("*", "")) or "**" in expr or re.search(r"\d{13}", expr) \
                or any(not re.fullmatch(r"[su]\d+", w) for w in words) or len(expr) > 500:
            raise BadFile(f"{path}: refused: a shape expression {expr[:60]!r} is more than symbols and arithmetic")
    for size in _sizes(program):
        if size > MAX_PROGRAM_ELEMENTS:
            raise BadFile(f"{path}: refused: it asks for a size of {size:,} elements, over the "
                          f"{MAX_PROGRAM_ELEMENTS:,} a program from a file may use")


def _sizes(node, depth: int = 0):
    """Every integer size the program names (as_int, and the product of each as_ints list), before it runs."""
    if depth > 64:
        raise BadFile("a .pt2 nested deeper than a program is")
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "as_int" and isinstance(value, int):
                yield abs(value)
            elif key == "as_ints" and isinstance(value, list):
                yield math.prod(abs(v) for v in value if isinstance(v, int))
            else:
                yield from _sizes(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            yield from _sizes(value, depth + 1)


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
