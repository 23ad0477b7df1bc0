"""Files from elsewhere: a checkpoint never runs code, on every path that reads one (predict, evaluate, export,
net_from_checkpoint, resuming a run with ckpt_path=), and every bad file ends in one line and its exit code.

Each crafted checkpoint would create a marker file if anything it names were called or unpickled; every
test asserts the marker is absent, the exit code, and the one line."""
import os
import subprocess  # noqa: F401  (named by the crafted specs; never called by the code under test)

import pytest
import torch

from mnist_arch.commands import evaluate
from mnist_arch.commands import export
from mnist_arch.commands import predict
from mnist_arch.commands import run
from mnist_arch.errors import BadFile
from mnist_arch.models import TRUST_ENV, build_net, net_from_checkpoint
from tests.conftest import every_model, fast_overrides, hydra_command


class Payload:
    """Pickled, it would run `touch <marker>` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def state_of(spec):
    return {f"net.{k}": v for k, v in build_net(spec).state_dict().items()}


TINY = {"name": "convnet", "arch": None, "net": {"stages": [[4], [8]]}}


def crafted(kind: str, folder, marker):
    """A checkpoint file of the given kind; none may touch `marker` when read."""
    path = folder / f"{kind}.ckpt"
    weights = state_of(TINY)
    specs = {
        "subprocess": {"name": "custom", "net": {"_target_": "subprocess.run", "args": ["touch", str(marker)]}},
        "os_system": {"name": "custom", "net": {"_target_": "os.system", "command": f"touch {marker}"}},
        "preset_as_custom": {"name": "innocent", "arch": "custom", "net": {"_target_": "subprocess.run",
                                                                          "args": ["touch", str(marker)]}},
        "traversal": {"name": "../../escaped", "arch": "convnet", "net": {"stages": [[4], [8]]}},
        "tensor_argument": {"name": "convnet", "net": {"stages": torch.tensor([[4], [8]])}},
        "unregistered": {"name": "resnet9000", "net": {}},
    }
    if kind == "pickled":
        torch.save({"net_spec": TINY, "state_dict": weights, "payload": Payload(marker)}, path)
    elif kind == "truncated":
        torch.save({"net_spec": TINY, "state_dict": weights}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "not_a_dict":
        torch.save([1, 2, 3], path)
    else:
        torch.save({"net_spec": specs[kind], "state_dict": weights}, path)
    return path


REFUSALS = {
    "subprocess": "its net is custom code, 'subprocess.run', which is not imported from a checkpoint unless you trust "
                  "it: add --trust-target subprocess.run (or set MNIST_ARCH_TRUST_TARGETS=subprocess.run)",
    "os_system": "its net is custom code, 'os.system', which is not imported",
    "preset_as_custom": "its net is custom code, 'subprocess.run', which is not imported",
    "pickled": "refused: it holds a pickled Python object (posix.system), not only tensors and plain data; "
               "checkpoints are read as data (weights_only=True)",
    "truncated": "not a checkpoint: it has no zip directory (truncated, or not the zip archive torch.save writes)",
    "not_a_dict": "not an mnist_arch checkpoint (it has no state_dict of named tensors)",
    "traversal": "its model name '../../escaped' is not a plain name (letters, digits, _ . -)",
    "tensor_argument": "its net_spec is not a model spec (a name, an optional arch, and the net's arguments as plain "
                       "values)",
    "unregistered": f"unknown model 'resnet9000'; available: {every_model()}",
}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize("kind", list(REFUSALS))
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_crafted_checkpoint_is_refused_in_one_line_and_runs_nothing(tmp_path, capsys, command, kind):
    marker = tmp_path / "marker"
    path = crafted(kind, tmp_path, marker)
    picture = tmp_path / "digit.npy"  # never reached: the checkpoint is refused first
    argv = {"predict": [str(path), str(picture)], "evaluate": [str(path)],
            "export": [str(path), "--format", "torchscript"]}[command]
    main = {"predict": predict.main, "evaluate": evaluate.main, "export": export.main}[command]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert one_error_line(capsys).startswith(f"error: {path}: {REFUSALS[kind]}")
    assert not marker.exists()
    assert not (tmp_path.parent / "escaped.pt").exists()


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_net_from_checkpoint_refuses_the_same_files(tmp_path, kind):
    marker = tmp_path / "marker"
    path = crafted(kind, tmp_path, marker)
    with pytest.raises(BadFile) as refused:
        net_from_checkpoint(path)
    assert str(refused.value).startswith(f"{path}: {REFUSALS[kind]}") and "\n" not in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_trusting_a_function_by_name_still_calls_nothing(tmp_path, capsys, monkeypatch, how):
    """The opt-in names a class; even then it must be an nn.Module subclass, checked before any call."""
    marker = tmp_path / "marker"
    path = crafted("subprocess", tmp_path, marker)
    argv = [str(path)]
    if how == "flag":
        argv += ["--trust-target", "subprocess.run"]
    else:
        monkeypatch.setenv(TRUST_ENV, "tests.nets.TinyConv, subprocess.run")
    with pytest.raises(SystemExit) as done:
        evaluate.main(argv)
    assert done.value.code == 2 and not marker.exists()
    assert one_error_line(capsys) == (f"error: {path}: its net_spec cannot be built: model.net._target_=subprocess.run "
                                      "is a function, not a subclass of Module")


@pytest.mark.parametrize("how", ["flag", "environment", "neither"])
def test_a_trusted_custom_class_is_built_and_an_untrusted_one_is_not(tmp_path, capsys, monkeypatch, how):
    spec = {"name": "custom", "arch": None, "net": {"_target_": "tests.nets.TinyConv", "width": 3}}
    torch.save({"net_spec": spec, "state_dict": state_of(spec)}, tmp_path / "tiny.ckpt")
    image = torch.zeros(28, 28)
    image[8:20, 13:15] = 1.0  # a "1"
    import numpy as np

    np.save(tmp_path / "one.npy", image.numpy())
    argv = [str(tmp_path / "tiny.ckpt"), str(tmp_path / "one.npy")]
    if how == "flag":
        argv += ["--trust-target", "tests.nets.TinyConv"]
    elif how == "environment":
        monkeypatch.setenv(TRUST_ENV, "tests.nets.TinyConv")
    with pytest.raises(SystemExit) as done:
        predict.main(argv)
    captured = capsys.readouterr()
    if how == "neither":
        assert done.value.code == 2 and "its net is custom code, 'tests.nets.TinyConv'" in captured.err
    else:
        assert done.value.code == 0 and captured.out.startswith(f"{tmp_path / 'one.npy'}: ")


def _run_cli(argv, monkeypatch):
    return hydra_command(run.main, argv, monkeypatch)


@pytest.mark.parametrize("kind, message", [
    ("pickled", REFUSALS["pickled"]),
    ("truncated", REFUSALS["truncated"]),
    ("not_a_dict", REFUSALS["not_a_dict"]),
    ("weights_only", "not a checkpoint a run can resume from (it has no epoch, global_step, optimizer_states, loops); "
                     "resume takes the last.ckpt or interrupted.ckpt a run wrote"),
    ("other_net", "its weights do not fit s4 as built now (bnorm.bias: missing from the checkpoint)"),
])
def test_resuming_from_a_bad_checkpoint_is_one_line_before_training(mnist_root, tmp_path, capsys, monkeypatch,
                                                                      kind, message):
    marker = tmp_path / "marker"
    if kind in ("weights_only", "other_net"):
        path = tmp_path / f"{kind}.ckpt"
        weights = state_of({"name": "s4", "net": {}}) if kind == "weights_only" else state_of(TINY)
        torch.save({"net_spec": TINY, "state_dict": weights, **({} if kind == "weights_only" else {
            "epoch": 0, "global_step": 4, "optimizer_states": [], "loops": {}})}, path)
    else:
        path = crafted(kind, tmp_path, marker)
    code = _run_cli([*fast_overrides(mnist_root), f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"],
                    monkeypatch)
    assert code == 2 and not marker.exists()
    assert one_error_line(capsys).startswith(f"error: {path}: {message}")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any epoch


def test_a_run_refuses_a_function_as_its_net(mnist_root, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    code = _run_cli([*fast_overrides(mnist_root), "model=custom", "model.net._target_=subprocess.run",
                     f"+model.net.args=[touch,{marker}]", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    assert code == 2 and not marker.exists()
    assert one_error_line(capsys) == "error: model.net._target_=subprocess.run is a function, not a subclass of Module"


def test_an_optimizer_or_scheduler_target_must_be_one(make_cfg):
    from mnist_arch.config.schema import validate
    from mnist_arch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^optimizer._target_=os.system is a function, not a subclass of Optimizer$"):
        validate(make_cfg(["optimizer._target_=os.system"]))
    with pytest.raises(ConfigError, match=r"^scheduler._target_=torch.optim.SGD is a class, not a subclass of "
                                          r"LRScheduler$"):
        validate(make_cfg(["scheduler._target_=torch.optim.SGD"]))


def _png_header(width: int, height: int) -> bytes:
    """The start of a PNG that claims width x height pixels (decoding it would need that much memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def test_every_bad_file_is_one_line_and_the_good_ones_are_still_read(tmp_path, capsys):
    """The issue's table on one command line: each bad file one line on stderr, the good ones predicted, exit 1."""
    import struct

    import numpy as np

    checkpoint = tmp_path / "tiny.ckpt"
    torch.save({"net_spec": TINY, "state_dict": state_of(TINY)}, checkpoint)
    good = np.zeros((2, 28, 28), dtype=np.uint8)
    good[:, 6:22, 12:16] = 255
    np.save(tmp_path / "good.npy", good)
    bad = {
        "large.png": (_png_header(4_100, 3_000), "4100x3000 pixels, over the 12 megapixels predict decodes"),
        "bomb.png": (_png_header(20_000, 20_000), "400,000,000 pixels, over the 12 megapixels predict decodes"),
        "none.npy": (None, "an empty array (shape (0, 28, 28)): no images"),
        "short-idx3-ubyte": (struct.pack(">IIII", 0x803, 1000, 28, 28) + bytes(784 * 2),
                             "its header promises 1000x28x28 uint8 values (784,000 bytes) but it holds 1,568 bytes"),
        "labels-idx1-ubyte": (struct.pack(">II", 0x801, 3) + bytes(3), "an array of shape (3,); a digit is (H, W)"),
        "objects.npy": (b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
                        .ljust(128, b" ")[:127] + b"\n" + bytes(16), "an array of object; a picture's pixels are"),
        "fifo": (None, "not a regular file (a FIFO, socket or device)"),
        "empty.png": (b"", "is empty, not a picture or array"),
    }
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28)))
    os.mkfifo(tmp_path / "fifo")  # opening it to read would block forever
    for name, (data, _) in bad.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    files = [tmp_path / "good.npy", *(tmp_path / name for name in bad), tmp_path / "good.npy"]
    with pytest.raises(SystemExit) as done:
        predict.main([str(checkpoint), *map(str, files)])
    captured = capsys.readouterr()
    assert done.value.code == 1
    assert len(captured.out.splitlines()) == 4 and captured.out.count("good.npy[") == 4
    errors = captured.err.splitlines()
    assert len(errors) == len(bad)
    for line, (name, (_, message)) in zip(errors, bad.items()):
        assert line.startswith(f"error: {tmp_path / name}: {message}"), line


def test_a_run_dir_with_a_damaged_summary_is_refused_not_guessed(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"net_spec": TINY, "state_dict": state_of(TINY)}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    (tmp_path / "run" / "summary.json").write_text('{"status": "completed", "test_ckpt": ')
    with pytest.raises(SystemExit) as done:
        export.main([str(tmp_path / "run"), "--format", "torchscript"])
    assert done.value.code == 2
    assert one_error_line(capsys) == (f"error: {tmp_path / 'run' / 'summary.json'}: not a readable summary.json "
                                      "(Expecting value: line 1 column 38 (char 37)); pass the checkpoint itself "
                                      f"instead (e.g. {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'})")


@pytest.mark.parametrize("config, message", [
    ("data: [unclosed", "not a readable run config (ParserError"),
    ("data:\n  val: holdout\n  holdout_size: lots\n", "its data.val / data.holdout_size / data.folds / data.fold are not a split"),
    ("data:\n  val: ${oc.env:HOME}\n", "its data.val / data.holdout_size / data.folds / data.fold are not a split"),
])
def test_a_run_dirs_config_is_data(tmp_path, capsys, config, message):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"net_spec": TINY, "state_dict": state_of(TINY)}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    (tmp_path / "run" / "config.yaml").write_text(config)
    with pytest.raises(SystemExit) as done:
        evaluate.main([str(tmp_path / "run")])
    assert done.value.code == 2
    assert one_error_line(capsys).startswith(f"error: {tmp_path / 'run' / 'config.yaml'}: {message}")


def test_a_foreign_run_dir_cannot_choose_where_data_is_fetched(tmp_path, monkeypatch):
    """Its data.root and data.download are not taken: evaluate resolves this machine's defaults."""
    from mnist_arch.inference.scoring import data_settings

    monkeypatch.setenv("MNIST_ARCH_DATA", str(tmp_path / "mine"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(
        f"data:\n  root: {tmp_path / 'elsewhere'}\n  download: true\n  verify: false\n  val: holdout\n"
        "  holdout_size: 64\n")
    data = data_settings(tmp_path / "run", ["data.download=false"])
    assert (data.root, data.download, data.verify, data.val, data.holdout_size) == (None, False, True, "holdout", 64)


def test_the_report_reads_every_good_summary_and_names_each_bad_one(tmp_path, capsys):
    from mnist_arch.commands import report
    from mnist_arch.results.record import RunRecord

    for i in range(2):
        RunRecord(status="completed", model="s4", params=17_120, seed=i, val_acc=[0.99], overrides=[f"seed={i}"],
                  budget={"max_params": 20_000, "max_epochs": 20, "target_acc": 0.994, "allow_fc": False}
                  ).write(tmp_path / f"good{i}")
    for name, text in {"cut": '{"status": "comp', "wrong": '{"val_acc": [7.5]}', "list": "[1, 2]"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(text)
    with pytest.raises(SystemExit) as done:
        report.main([str(tmp_path)])
    captured = capsys.readouterr()
    assert done.value.code == 1 and "| 1 | s4 | 17,120 | 0,1 | 99.00% ± 0.00 |" in captured.out
    assert captured.err.splitlines() == [
        f"error: {tmp_path / 'cut' / 'summary.json'}: not a readable summary.json (Unterminated string starting at: "
        "line 1 column 12 (char 11))",
        f"error: {tmp_path / 'list' / 'summary.json'}: not a readable summary.json (a JSON object was expected, not "
        "list)",
        f"error: {tmp_path / 'wrong' / 'summary.json'}: not a readable summary.json (field 'val_acc.0' holds 7.5: an "
        "accuracy outside [0, 1])"]
