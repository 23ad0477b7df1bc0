"""Shared fixtures: small IDX files written by the test, and the real Hydra composition."""
import hashlib
import struct
from pathlib import Path
from typing import List

import os

import numpy as np
import pytest
from hypothesis import settings

from mnist_arch.config.compose import compose
from mnist_arch.data import fetch

N_TRAIN, N_TEST = 320, 80

# Property tests draw new examples each run here; CI (HYPOTHESIS_PROFILE=ci in .ci/run) draws the same ones
# every time, so a red CI is reproducible.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding: magic (0x08 = ubyte, then the number of dims), big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int):
    """Learnable fake digits: class k lights up row band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def synthetic_files(seed: int = 0) -> dict:
    (x_tr, y_tr), (x_te, y_te) = synthetic_split(N_TRAIN, seed), synthetic_split(N_TEST, seed + 1)
    return {
        "train-images-idx3-ubyte": idx_bytes(x_tr),
        "train-labels-idx1-ubyte": idx_bytes(y_tr),
        "t10k-images-idx3-ubyte": idx_bytes(x_te),
        "t10k-labels-idx1-ubyte": idx_bytes(y_te),
    }


def checksums(files: dict) -> dict:
    """The MD5s that make `files` verify: patch them over fetch.MD5."""
    return {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


def write_root(root: Path, files: dict) -> Path:
    """A data root whose raw folder holds `files`."""
    raw = fetch.raw_folder(root)
    raw.mkdir(parents=True)
    for name, data in files.items():
        (raw / name).write_bytes(data)
    return root


def default_budget(**changes):
    """conf/budget/default.yaml's budget (the one place its values live), with `changes`."""
    from dataclasses import replace

    from mnist_arch.config.compose import load

    return replace(load([]).budget, **changes)


def datamodule(root, **changes):
    """MNISTDataModule with the data group's values (conf/data/mnist.yaml), reading `root`, and `changes`."""
    from dataclasses import asdict

    from mnist_arch.config.compose import load
    from mnist_arch.data import MNISTDataModule

    given = {"root": str(root)} if root is not None else {}
    return MNISTDataModule(**{**asdict(load([]).data), **given, "download": False, "seed": 0, **changes})


@pytest.fixture
def synthetic_md5(monkeypatch) -> dict:
    """The synthetic files' bytes; their MD5s replace the canonical ones for this test."""
    files = synthetic_files()
    monkeypatch.setattr(fetch, "MD5", checksums(files))
    return files


@pytest.fixture
def mnist_root(tmp_path, synthetic_md5) -> Path:
    """A data root whose raw folder holds the four synthetic IDX files (verified by their MD5)."""
    return write_root(tmp_path / "data", synthetic_md5)


@pytest.fixture(scope="session")
def make_cfg():
    """compose(overrides) with the real config tree, as `python -m mnist_arch.run` would see it."""

    def make(overrides: List[str] = (), hydra: bool = False):
        """hydra=True keeps the `hydra` node (launcher, sweeper, callbacks)."""
        return compose(overrides, with_hydra=hydra)

    return make


def hydra_command(main, argv: List[str], monkeypatch) -> int:
    """A Hydra command (run, lr_find, search) as typed, `main` with `argv`, in this process; its exit code (0
    when it returned). Hydra's global state is cleared after, so the next call composes afresh."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", [main.__module__, *argv])
    try:
        main()
    except SystemExit as e:
        return e.code or 0
    finally:
        GlobalHydra.instance().clear()
    return 0


def ctrl_c_at(monkeypatch, epoch: int, batch: int):
    """Ctrl-C during training at that (0-based) epoch and batch, as the Trainer sees one; pytest keeps its own
    Ctrl-C handler. Returns the real training step, to put back."""
    import signal

    from mnist_arch.train.module import Classifier

    real_step = Classifier.training_step

    def step(self, data, batch_idx):
        if self.current_epoch == epoch and batch_idx == batch:
            raise KeyboardInterrupt
        return real_step(self, data, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", step)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    return real_step


def fast_overrides(root: Path) -> List[str]:
    """A CPU run of two short epochs on the synthetic data, no network."""
    return [
        f"data.root={root}",
        "data.download=false",
        "data.batch_size=32",
        "data.eval_batch_size=40",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]


def every_model() -> str:
    """What an unknown model name's message lists: conf/model's options (the architectures and the presets), sorted,
    then custom; read from the folder, so a new preset needs no test edited."""
    folder = Path(__file__).resolve().parents[1] / "conf" / "model"
    return ", ".join([*sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "custom"), "custom"])
