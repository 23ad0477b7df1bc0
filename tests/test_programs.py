"""A .pt2 is a program (docs/trust.md): predict, evaluate and serve run one only when the user names it with
--trust-program (its path or sha256), and refuse any other in one line before torch opens it. The hostile
archives here are made as an attacker would: from a .pt2 that `export` wrote, edited, or exported from a module
that does what an attacker wants. Each would create a marker file (or hang, or eat memory) if it ran; every
test asserts the marker is absent, the exit code and the one line."""
import io
import json
import os
import re
import time
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mnist_arch.commands import evaluate, export, predict
from mnist_arch.errors import BadFile
from mnist_arch.inference import formats as programs
from mnist_arch.inference.formats import read_pt2, sha256
from mnist_arch.models import build_net
from tests.conftest import synthetic_split

TINY = {"name": "convnet", "arch": None, "net": {"stages": [[4], [8]]}}


class Payload:
    """Pickled, it would run `touch <marker>` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(a checkpoint of a tiny registered net, the .pt2 `export` wrote from it, export's output, a .npy of digits)."""
    folder = tmp_path_factory.mktemp("programs")
    torch.manual_seed(0)
    net = build_net(TINY)
    torch.save({"net_spec": TINY, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}},
               folder / "tiny.ckpt")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", out)
        with pytest.raises(SystemExit) as done:
            export.main([str(folder / "tiny.ckpt"), "--format", "pt2", "--out", str(folder / "tiny.pt2")])
    assert done.value.code == 0, out.getvalue()
    np.save(folder / "digits.npy", synthetic_split(3, 7)[0])
    return folder / "tiny.ckpt", folder / "tiny.pt2", out.getvalue(), folder / "digits.npy"


def refused(capsys, main, argv) -> str:
    """main(argv) exits 2 with one line on stderr; that line."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def never_loaded(monkeypatch):
    """torch.export.load (and so anything in an archive) must not be reached."""
    def fail(*args, **kwargs):
        raise AssertionError("torch.export.load was called on an untrusted file")
    monkeypatch.setattr(torch.export, "load", fail)


def test_export_prints_the_sha256_and_a_trusted_pt2_predicts_as_the_checkpoint(exported, capsys):
    ckpt, pt2, out, digits = exported
    digest = sha256(pt2.read_bytes())
    assert f"sha256 {digest}" in out and f"--trust-program {digest}" in out
    answers = {}
    for net in (ckpt, pt2):
        trust = [] if net == ckpt else ["--trust-program", digest]
        with pytest.raises(SystemExit) as done:
            predict.main([str(net), str(digits), "--json", *trust])
        assert done.value.code == 0
        answers[net] = [(r["digit"], round(r["probability"], 5)) for r in json.loads(capsys.readouterr().out)]
    assert answers[pt2] == answers[ckpt] and len(answers[pt2]) == 3
    with pytest.raises(SystemExit) as done:  # trusted by its path instead of its digest
        predict.main([str(pt2), str(digits), "--trust-program", str(pt2)])
    assert done.value.code == 0 and capsys.readouterr().out.count("digits.npy[") == 3


@pytest.mark.parametrize("command", ["predict", "evaluate", "serve"])
def test_an_untrusted_pt2_is_one_line_before_torch_opens_it(exported, tmp_path, capsys, monkeypatch, command):
    _, pt2, _, digits = exported
    never_loaded(monkeypatch)
    if command == "serve":
        from mnist_arch.inference.server import load_nets
        from mnist_arch.inference.trained import Trust

        with pytest.raises(BadFile) as error:
            load_nets([str(pt2)], Trust())
        line = str(error.value)
    else:
        main = {"predict": predict.main, "evaluate": evaluate.main}[command]
        line = refused(capsys, main, [str(pt2), *([str(digits)] if command == "predict" else [])])
    assert "a .pt2 is a program" in line and f"--trust-program {pt2}" in line and sha256(pt2.read_bytes()) in line
    other = tmp_path / "other.pt2"  # trusting one file (by path or digest) trusts no other
    other.write_bytes(pt2.read_bytes() + b"\0")
    assert "a .pt2 is a program" in refused(capsys, predict.main, [str(other), str(digits), "--trust-program", str(pt2),
                                                                   "--trust-program", sha256(pt2.read_bytes())])


def _rewritten(source, target, change, add=()):
    """A copy of the .pt2 `source`: `change(name, bytes) -> (name, bytes)` applied to each record, `add` appended."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            name, data = change(info.filename, old.read(info.filename))
            new.writestr(name, data)
        for name, data in add:
            new.writestr(name, data)
    return target


def _renamed_model(marker):
    """The program saved as `evil` instead of `model`, one weight marked use_pickle and holding a pickled payload."""
    import pickle

    def change(name, data):
        name = name.replace("models/model.json", "models/evil.json").replace(
            "model_weights_config.json", "evil_weights_config.json").replace(
            "sample_inputs/model.pt", "sample_inputs/evil.pt").replace(
            "model_constants_config.json", "evil_constants_config.json")
        if name.endswith("evil_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"]))
            config["config"][first]["use_pickle"] = True
            data = json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            data = pickle.dumps(Payload(marker))
        return name, data
    return change


class HugeOnes(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) + torch.ones(750_000_000)[:10]


class WrongShape(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).sum(dim=1)


def _exported_module(folder, module, name):
    path = folder / f"{name}.pt2"
    programs.export_pt2(module, torch.zeros(2, 1, 28, 28), path)
    return path


def _hostile(kind, folder, pt2, marker):
    import pickle

    net = build_net(TINY).eval()
    if kind == "renamed_model_pickled_weight":
        return _rewritten(pt2, folder / f"{kind}.pt2", _renamed_model(marker))
    if kind == "legacy_pickled_weights":
        return _rewritten(pt2, folder / f"{kind}.pt2", lambda n, b: (n, b),
                          add=[("archive/data/weights/model.pt", pickle.dumps(Payload(marker)))])
    if kind == "native_library":
        return _rewritten(pt2, folder / f"{kind}.pt2", lambda n, b: (n, b),
                          add=[("archive/data/aotinductor/model/evil.so", b"\x7fELF" + b"\0" * 64)])
    if kind == "writes_a_file":  # torch.export cannot trace from_file: the attacker writes the node in by hand
        marker.write_bytes(b"\0\0\0\0")
        return _rewritten(pt2, folder / f"{kind}.pt2", lambda n, b: (n, b.replace(
            b'"torch.ops.aten.relu.default"', b'"torch.ops.aten.from_file.default"', 1) if n.endswith("model.json")
            else b))
    if kind == "huge_ones":
        return _exported_module(folder, HugeOnes(net), kind)
    if kind == "shape_expression":
        return _rewritten(pt2, folder / f"{kind}.pt2", lambda n, b: (n, b.replace(
            b"Symbol('s77', positive=True, integer=True)", b"s77*9**9**9") if n.endswith("model.json") else b))
    if kind == "wrong_output_shape":
        return _exported_module(folder, WrongShape(net), kind)
    raise ValueError(kind)


HOSTILE = {  # what a trusted archive of each kind is still refused for (untrusted: all are refused unopened)
    "renamed_model_pickled_weight": "is a pickled Python object, not a tensor",
    "legacy_pickled_weights": "refused: a legacy pickled record",
    "native_library": "refused: it carries native code",
    "writes_a_file": "refused: a node calls 'torch.ops.aten.from_file.default'",
    "huge_ones": "refused: it asks for a size of 750,000,000 elements",
    "shape_expression": "refused: a shape expression 's77*9**9**9'",
    "wrong_output_shape": "its program gives (2,) for 2 digits, not (2, 10) logits",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_pt2_runs_nothing_untrusted_or_trusted(exported, tmp_path, capsys, monkeypatch, kind):
    """Untrusted: refused before torch sees it. Trusted by its digest (as a user fooled into it would): the checks
    that cost the machine rather than the user's judgement still refuse it, in seconds, and nothing ran."""
    _, pt2, _, digits = exported
    marker = tmp_path / "marker"
    path = _hostile(kind, tmp_path, pt2, marker)
    before = marker.read_bytes() if marker.exists() else None
    with monkeypatch.context() as patched:
        never_loaded(patched)
        assert "a .pt2 is a program" in refused(capsys, predict.main, [str(path), str(digits)])
    started = time.perf_counter()
    line = refused(capsys, predict.main, [str(path), str(digits), "--trust-program", sha256(path.read_bytes())])
    assert HOSTILE[kind] in line and time.perf_counter() - started < 30
    assert (marker.read_bytes() if marker.exists() else None) == before  # nothing unpickled, mapped or written


MEMBERS = ["archive/models/model.json", "archive/data/weights/model_weights_config.json",
           "archive/data/constants/model_constants_config.json", "archive/data/sample_inputs/model.pt",
           "archive/data/weights/weight_0", "archive/archive_format", "archive/byteorder"]
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=20),
                        st.sampled_from(["torch.ops.aten.from_file.default", "builtins.eval", "s0**99", "weight_0",
                                         True, "__import__('os')"]))
EDITS = st.lists(st.one_of(
    st.tuples(st.just("rename"), st.sampled_from(MEMBERS), st.sampled_from(["evil", "model", "x/y", "../model"])),
    st.tuples(st.just("add"), st.sampled_from(["archive/data/weights/w.pt", "archive/data/aotinductor/a.so",
                                                "archive/models/other.json", "archive/extra"]), st.binary(max_size=64)),
    st.tuples(st.just("json"), st.sampled_from(MEMBERS[:3]), JSON_VALUES),
), min_size=1, max_size=4)


def _edit(data: bytes, edits) -> bytes:
    """The archive `data` with each edit applied: a member renamed, a member added, a JSON value replaced."""
    with zipfile.ZipFile(io.BytesIO(data)) as old:
        members = {info.filename: old.read(info.filename) for info in old.infolist()}
    for kind, member, value in edits:
        if kind == "rename" and member in members:
            members[member.replace("model", value, 1) if "model" in member else member + value] = members.pop(member)
        elif kind == "add":
            members[member] = value
        elif kind == "json" and member in members:
            text = members[member].decode()
            keys = re.findall(r'"(\w+)": (?:"[^"]*"|\d+|true|false|null)', text)
            if keys:
                key = keys[len(text) % len(keys)]
                text = re.sub(rf'"{key}": (?:"[^"]*"|\d+|true|false|null)', lambda _: f'"{key}": {json.dumps(value)}',
                              text, count=1)
            members[member] = text.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as new:
        for name, member in members.items():
            new.writestr(name, member)
    return buffer.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_an_edited_pt2_is_a_prediction_or_one_line_and_runs_nothing(exported, tmp_path, edits):
    """Any archive export wrote, edited at random: untrusted, always refused before torch opens it; trusted by its
    digest, either a net giving (N, 10) logits or one line (BadFile), in bounded time, touching no file."""
    _, pt2, _, _ = exported
    path = tmp_path / "edited.pt2"
    path.write_bytes(_edit(pt2.read_bytes(), edits))
    with pytest.raises(BadFile, match="a .pt2 is a program"):
        read_pt2(path)
    watched = sorted(p.name for p in tmp_path.iterdir())
    started = time.perf_counter()
    try:
        net = read_pt2(path, trust=[sha256(path.read_bytes())])
    except BadFile as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert time.perf_counter() - started < 30 and sorted(p.name for p in tmp_path.iterdir()) == watched


@pytest.mark.parametrize("kind, loader", [("torchscript", "torch.jit.load"), ("onnx", "onnxruntime.InferenceSession")])
def test_export_runs_its_torchscript_or_onnx_only_as_the_bytes_it_wrote(exported, tmp_path, monkeypatch, kind, loader):
    """export checks what it wrote by running it: a program, so only the bytes of the digest it took as it wrote
    them; a file changed since (another process swapped it) is refused before the loader sees it."""
    import importlib

    ckpt = exported[0]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", out)
        with pytest.raises(SystemExit) as done:
            export.main([str(ckpt), "--format", kind, "--out", str(tmp_path / f"net.{kind}")])
    assert done.value.code == 0, out.getvalue()
    digest = re.search(r"sha256 ([0-9a-f]{64})", out.getvalue()).group(1)
    path = tmp_path / f"net.{kind}"
    run = programs.FORMATS[kind][2]
    assert run(path, torch.zeros(2, 1, 28, 28), digest).shape == (2, 10)
    module, _, name = loader.rpartition(".")
    owner = importlib.import_module(module) if module != "torch.jit" else torch.jit

    def never(*args, **kwargs):
        raise AssertionError(f"{loader} was reached for a file that is not the one written")

    monkeypatch.setattr(owner, name, never)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(BadFile, match="not the file export just wrote"):
        run(path, torch.zeros(2, 1, 28, 28), digest)
