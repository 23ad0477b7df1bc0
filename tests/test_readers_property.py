"""Property-based tests of everything that reads a file or an override someone hands us: fed generated
shapes, dtypes, values and truncated or garbled bytes, each reader returns what it promises or raises the
project's own one-line error (BadFile / ConfigError), never anything else."""
import io
import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mnist_arch.data.digits import prepare, read
from mnist_arch.data.idx import TYPES, parse_idx
from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.models import build_net, net_from_checkpoint, read_checkpoint
from mnist_arch.results.record import RunRecord

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NUMBER_DTYPES = st.sampled_from(["uint8", "int8", "int16", "int64", "float16", "float32", "float64", "bool"])
ANY_DTYPES = st.one_of(NUMBER_DTYPES, st.sampled_from(["complex64", "<U3", "datetime64[s]"]))


def a_digit(x: torch.Tensor) -> bool:
    return (x.shape == (28, 28) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
            and float(x.min()) >= 0 and float(x.max()) <= 1)


def one_line(error: Exception) -> bool:
    return bool(str(error)) and "\n" not in str(error)


def read_or_refuse(read_it, *args, refusal=BadFile):
    """What read_it(*args) returns, or None when it refused with the project's one-line error; any other
    exception fails the test."""
    try:
        return read_it(*args)
    except refusal as e:
        assert one_line(e), repr(e)
        return None


@FAST
@given(hnp.arrays(NUMBER_DTYPES, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40)))
def test_prepare_gives_a_digit_or_one_line(image):
    x = read_or_refuse(prepare, image)
    assert x is None or a_digit(x)


@FAST
@given(st.binary(max_size=120))
def test_any_bytes_are_an_idx_array_or_one_line(data):
    array = read_or_refuse(parse_idx, data)
    dims = data[3] if array is not None else 0
    assert array is None or array.ndim == dims and array.shape == struct.unpack(f">{dims}I", data[4:4 + 4 * dims])


@FAST
@given(hnp.arrays(st.sampled_from([np.dtype(t).newbyteorder(">") for t in TYPES.values()]),
                  hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)),
       st.integers(min_value=-40, max_value=8))
def test_an_idx_file_reads_back_exactly_and_a_cut_or_padded_one_is_refused(array, cut):
    code = next(k for k, t in TYPES.items() if t == array.dtype)
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if cut == 0:
        np.testing.assert_array_equal(parse_idx(data), array)
        return
    changed = data[:cut] if cut < 0 else data + bytes(cut)
    if changed == data:  # cutting an empty body changes nothing
        return
    with pytest.raises(BadFile) as refused:
        parse_idx(changed)
    assert one_line(refused.value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("files")


def digits_or_one_line(path) -> None:
    try:
        digits = read(path)
    except BadFile as e:
        assert one_line(e) and str(e).startswith(str(path))  # the one line names the file
        return
    assert digits and all(a_digit(x) for _, x in digits)


@FAST
@given(array=hnp.arrays(ANY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=30)),
       keep=st.floats(min_value=0, max_value=1))
def test_an_npy_file_whole_or_cut_gives_digits_or_one_line(folder, array, keep):
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    (folder / "x.npy").write_bytes(data if keep == 1 else data[:int(len(data) * keep)])
    digits_or_one_line(folder / "x.npy")


MODES = st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I", "I;16", "F", "LA", "CMYK"])
FORMATS = st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "GIF"])


@FAST
@given(mode=MODES, size=st.tuples(st.integers(1, 60), st.integers(1, 60)), fmt=FORMATS, seed=st.integers(0, 99),
       keep=st.floats(min_value=0, max_value=1))
def test_a_picture_in_any_mode_whole_or_cut_gives_a_digit_or_one_line(folder, mode, size, fmt, seed, keep):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0]), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # a mode this format cannot hold
    data = buffer.getvalue()
    (folder / "x.pic").write_bytes(data if keep == 1 else data[:int(len(data) * keep)])
    digits_or_one_line(folder / "x.pic")


@pytest.fixture(scope="module")
def checkpoint_bytes(folder):
    net = build_net({"name": "convnet", "net": {"stages": [[4], [8]]}})
    torch.save({"net_spec": {"name": "convnet", "arch": None, "net": {"stages": [[4], [8]]}},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, folder / "real.ckpt")
    return (folder / "real.ckpt").read_bytes()


@FAST
@given(keep=st.floats(min_value=0, max_value=1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                                                 max_size=4))
def test_a_cut_or_garbled_checkpoint_reads_or_is_one_line(folder, checkpoint_bytes, keep, flips):
    data = bytearray(checkpoint_bytes[:max(1, int(len(checkpoint_bytes) * keep))])
    for where, xor in flips:
        data[int(where * (len(data) - 1))] ^= xor
    (folder / "x.ckpt").write_bytes(bytes(data))
    checkpoint = read_or_refuse(read_checkpoint, folder / "x.ckpt")
    assert checkpoint is None or isinstance(checkpoint, dict) and isinstance(checkpoint["state_dict"], dict)


KEYS = ["optimizer.lr", "data.batch_size", "trainer.max_epochs", "model", "scheduler", "data.val", "model.net.dropout",
        "budget.max_params", "seed", "callbacks.ema", "data.rotation", "nonsense", "trainer.max_epoch", "model.net"]
VALUES = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["s4", "s6", "convnet", "holdout", "test", "null", "true", "[1,2]", "[[4],[8]]",
                                    "{a:1}", "'quoted'", "${oc.env:HOME}", "a,b", "[1", "", "onecycle", "sgd"]),
                   st.text(max_size=8))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "+", "++", "~"]), st.sampled_from(KEYS), VALUES), max_size=3))
def test_overrides_give_a_config_or_one_line(overrides):
    """The override parser behind every Hydra command (config.load: compose + validate)."""
    from mnist_arch.config.compose import load
    from mnist_arch.config.schema import Config

    conf = read_or_refuse(load, [f"{prefix}{key}={value}" if prefix != "~" else f"~{key}"
                                 for prefix, key, value in overrides], refusal=ConfigError)
    assert conf is None or isinstance(conf, Config)


RECORD_FIELDS = ["status", "model", "params", "val_acc", "test_acc", "budget", "seed", "overrides", "version",
                 "fc_layers", "train_loss", "wall_time_s", "unpredicted", "net_spec", "anything"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


@FAST
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(RECORD_FIELDS), JSON, max_size=6)), st.booleans())
def test_any_summary_json_reads_and_the_leaderboard_takes_it(folder, data, cut):
    """A summary.json from elsewhere: read (or marked unreadable, one line), and the report never crashes on it."""
    from mnist_arch.results import leaderboard

    text = json.dumps(data)
    (folder / "summary.json").write_text(text[:len(text) // 2] if cut else text)
    record = RunRecord.read(folder / "summary.json")
    if record.status == "unreadable":
        assert one_line(record.error)
    differing, rows, failed = leaderboard.leaderboard([record])
    leaderboard.markdown(differing, rows, failed)
    record.headline()


CONVNET_KEYS = ["stages", "padding", "transitions", "bias", "class_bias", "order", "dropout", "head", "num_classes",
                "width", "_target_"]
SPEC_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70_000) | st.floats(-2, 2) |
    st.sampled_from(["same", "valid", "bn_relu", "relu_bn", "gap_conv", "abc", "0.25", "os.system"]),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@FAST
@given(name=st.sampled_from(["convnet", "s4", "s6", "custom", "frontier_8k", "x/../y", ""]),
       arch=st.sampled_from([None, "convnet", "s4", "custom", 3]),
       net=st.dictionaries(st.sampled_from(CONVNET_KEYS), SPEC_VALUES, max_size=4))
def test_any_net_spec_in_a_checkpoint_builds_or_is_one_line(folder, name, arch, net):
    """A checkpoint's net_spec is what a stranger controls most: whatever it says, the net is built (within the
    limits, its weights fitting) or the file is refused in one line; nothing else escapes, nothing is imported."""
    spec = {"name": name, "arch": arch, "net": net}
    state = build_net({"name": "convnet", "net": {"stages": [[4], [8]]}}).state_dict()
    torch.save({"net_spec": spec, "state_dict": {f"net.{k}": v for k, v in state.items()}}, folder / "spec.ckpt")
    built = read_or_refuse(net_from_checkpoint, folder / "spec.ckpt")
    assert built is None or isinstance(built[0], torch.nn.Module)
