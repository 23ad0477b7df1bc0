"""What a file from elsewhere may expand to (mnist_arch/files.py): each limit is judged from the header
before the expansion, so a refused file costs next to nothing. Memory is measured with tracemalloc, which
sees numpy's and Python's allocations; the whole-process figures are in docs/trust.md."""
import gzip
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from mnist_arch.config.recipe import build_scheduler
from mnist_arch.data.digits import read
from mnist_arch.data.idx import read_idx
from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.files import MAX_ARRAY_BYTES, MAX_NET_PARAMS, MiB, folder_name, write_atomic
from mnist_arch.models import build_net, net_from_checkpoint

TINY = {"name": "convnet", "arch": None, "net": {"stages": [[4], [8]]}}


def peak_mb(work) -> float:
    """The peak of Python's and numpy's allocations while `work()` runs, in MB; `work` may raise BadFile."""
    tracemalloc.start()
    try:
        work()
    except BadFile:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 1e6


def gz_idx(path, shape, body_bytes: int):
    """A .gz IDX file of uint8 zeros whose header promises `shape`; `body_bytes` of body (cheap to compress)."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(struct.pack(f">BBBB{len(shape)}I", 0, 0, 0x08, len(shape), *shape))
        chunk = bytes(1 << 20)
        for _ in range(body_bytes >> 20):
            f.write(chunk)
        f.write(bytes(body_bytes % (1 << 20)))
    return path


def test_an_idx_bomb_is_refused_from_its_header_before_it_is_decompressed(tmp_path):
    bomb = gz_idx(tmp_path / "bomb-idx3-ubyte.gz", (1_300_000, 28, 28), 200 << 20)  # ~200 KB on disk
    assert bomb.stat().st_size < 1 * MiB
    with pytest.raises(BadFile, match=r"1300000x28x28 uint8 values .* over the 96 MiB an IDX file may hold"):
        read_idx(bomb)
    assert peak_mb(lambda: read_idx(bomb)) < 2


def test_a_stack_of_digits_is_refused_from_its_header_where_one_is_read(tmp_path):
    """The serve page reads one digit: 100,000 small ones (a 160 KB .gz) cost nothing to refuse."""
    many = gz_idx(tmp_path / "many-idx3-ubyte.gz", (100_000, 8, 8), 100_000 * 64)
    with pytest.raises(BadFile, match=r"holds 100,000 images of 8x8; one image of at most 12 megapixels is read here"):
        read(many, max_digits=1)
    assert peak_mb(lambda: read(many, max_digits=1)) < 2
    npy = tmp_path / "many.npy"
    np.save(npy, np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(BadFile, match="holds 5 images of 28x28; one image"):
        read(npy, max_digits=1)


def test_idx_within_the_limits_reads_exactly_big_endian_included(tmp_path):
    values = np.arange(-600, 600, dtype=">i2").reshape(2, 20, 30)
    path = tmp_path / "x-idx3"
    path.write_bytes(struct.pack(">BBBBIII", 0, 0, 0x0B, 3, 2, 20, 30) + values.tobytes())
    got = read_idx(path)
    assert got.dtype == np.dtype("int16") and got.flags.writeable
    np.testing.assert_array_equal(got, values)
    assert MAX_ARRAY_BYTES >= 100_000 * 28 * 28  # a stack of 100,000 digits as bytes fits


def checkpoint_zip(path, records):
    """A zip archive laid out as torch.save lays one out, with the given (name, bytes, compression) records."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, compression in records:
            archive.writestr(zipfile.ZipInfo(f"ckpt/{name}"), data, compress_type=compression)
    return path


def test_a_checkpoint_record_that_deflates_past_the_limit_is_refused_before_torch_load(tmp_path):
    real = tmp_path / "real.ckpt"
    torch.save({"net_spec": TINY, "state_dict": {}}, real)
    with zipfile.ZipFile(real) as archive:
        records = [(i.filename.split("/", 1)[1], archive.read(i), zipfile.ZIP_STORED) for i in archive.infolist()]
    bomb = checkpoint_zip(tmp_path / "bomb.ckpt", records + [("data/9", bytes(80 << 20), zipfile.ZIP_DEFLATED)])
    assert bomb.stat().st_size < 1 * MiB
    with pytest.raises(BadFile, match="its records declare 80 MiB, over the 64 MiB a checkpoint may expand to"):
        net_from_checkpoint(bomb)
    assert peak_mb(lambda: net_from_checkpoint(bomb)) < 5
    pickled = checkpoint_zip(tmp_path / "pickled.ckpt", [("data.pkl", bytes(5 << 20), zipfile.ZIP_DEFLATED)])
    with pytest.raises(BadFile, match="its data.pkl declares 5.0 MiB, over the 4 MiB"):
        net_from_checkpoint(pickled)
    many = checkpoint_zip(tmp_path / "many.ckpt", [(f"data/{i}", b"", zipfile.ZIP_STORED) for i in range(10_001)])
    with pytest.raises(BadFile, match="a zip archive of 10,001 records"):
        net_from_checkpoint(many)


def test_random_bytes_are_called_what_they_are(tmp_path):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(BadFile, match="not a checkpoint: it has no zip directory"):
        net_from_checkpoint(path)


@pytest.mark.parametrize("stages, message", [
    ([[20_000], [20_000]], r"builds a net of 3,600,\d{3},\d{3} parameters and buffers, over the 4,000,000"),
    ([[6_500]], r"its weights do not fit convnet as built now \(classes.weight: shape \(10, 8, 1, 1\) in the checkpoint, "
                  r"\(10, 6500, 1, 1\) in the net\)"),
])
def test_a_net_spec_is_sized_on_the_meta_device_before_anything_is_allocated(tmp_path, stages, message):
    """A 1.7 KB checkpoint whose spec asks for a 1.5 GB (or 14 GB) net: refused without building it."""
    path = tmp_path / "wide.ckpt"
    torch.save({"net_spec": {"name": "convnet", "arch": None, "net": {"stages": stages}},
                "state_dict": {f"net.{k}": v for k, v in build_net(TINY).state_dict().items()}}, path)
    assert path.stat().st_size < 16_000
    with pytest.raises(BadFile, match=message):
        net_from_checkpoint(path)
    assert peak_mb(lambda: net_from_checkpoint(path)) < 20
    assert MAX_NET_PARAMS < 3_600_000_000


def test_a_net_argument_of_the_wrong_type_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"model.net.dropout='abc': S4 takes a float here, not a str"):
        build_net({"name": "s4", "net": {"dropout": "abc"}})
    path = tmp_path / "string_dropout.ckpt"
    s6 = {"name": "s6", "arch": None, "net": {"dropout": 0.25}}
    torch.save({"net_spec": {**s6, "net": {"dropout": "0.25"}},
                "state_dict": {f"net.{k}": v for k, v in build_net(s6).state_dict().items()}}, path)
    with pytest.raises(BadFile, match=r"its net_spec cannot be built: model.net.dropout='0.25': S6 takes a float"):
        net_from_checkpoint(path)


def test_a_symlink_where_a_file_is_written_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "evaluate.json"
    link.symlink_to(victim)
    write_atomic(link, "{}\n")
    assert victim.read_text() == "keep me" and not link.is_symlink() and link.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("name", ["../../escaped", ".hidden", "a/b", "", "x" * 101, ".."])
def test_a_name_that_would_leave_its_folder_is_refused(name):
    with pytest.raises(ConfigError, match="names a folder: letters, digits and _ . - only"):
        folder_name(name, "search.study_name")
    assert folder_name("8k_v2.1", "search.study_name") == "8k_v2.1"


@pytest.mark.parametrize("batches, pct_start", [(5, 0.2), (10, 0.1), (4, 0.25), (100, 0.2)])
def test_one_cycle_takes_any_number_of_batches(make_cfg, batches, pct_start):
    """debug=limit with trainer.limit_train_batches=5 and one epoch: torch's OneCycleLR divided by zero."""
    net = build_net(TINY)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    conf = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "name": "onecycle", "interval": "step",
            "max_lr": 0.1, "pct_start": pct_start, "div_factor": 25.0, "final_div_factor": 1e4}
    scheduler = build_scheduler(conf, optimizer, batches, 1)["scheduler"]
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(batches - 1):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    assert all(0 < r <= 0.1 for r in rates) and rates[-1] < 0.01


def test_predict_given_only_refused_files_exits_2_and_some_refused_exits_1(tmp_path, capsys):
    from mnist_arch.commands import predict

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"net_spec": TINY, "state_dict": {f"net.{k}": v for k, v in build_net(TINY).state_dict().items()}},
               ckpt)
    bomb = gz_idx(tmp_path / "bomb-idx3-ubyte.gz", (1_300_000, 28, 28), 1 << 20)
    good = tmp_path / "good.npy"
    np.save(good, np.pad(np.full((8, 4), 255, np.uint8), ((10, 10), (12, 12))))
    for files, code in [([bomb], 2), ([bomb, good], 1), ([good], 0)]:
        with pytest.raises(SystemExit) as done:
            predict.main([str(ckpt), *map(str, files)])
        err = capsys.readouterr().err
        assert done.value.code == code and err.count("\n") == (code > 0)
        assert code == 0 or err.startswith(f"error: {bomb}: holds 1,300,000 images of 28x28; 1 to 100,000 images")
