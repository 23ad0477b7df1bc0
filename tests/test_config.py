"""Hydra composition of every config group option, and the schema's refusals."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_arch.config import ConfigError, validate
from mnist_arch.models import list_models


def options(group: str):
    import importlib.resources

    folder = importlib.resources.files("mnist_arch.conf") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def test_model_configs_mirror_the_registry():
    assert options("model") == list_models()


@pytest.mark.parametrize(
    "group", ["model", "data", "optimizer", "scheduler", "trainer", "callbacks", "logger"]
)
def test_every_option_of_every_group_composes_and_validates(make_cfg, group):
    for option in options(group):
        conf = validate(make_cfg([f"{group}={option}"]))
        if group in ("model", "optimizer", "scheduler", "logger"):
            assert getattr(conf, group).name == option


def test_defaults_are_the_reference_protocol(make_cfg):
    conf = validate(make_cfg())
    assert (conf.model.name, conf.data.val, conf.data.batch_size) == ("s4", "test", 64)
    assert (conf.optimizer.name, conf.optimizer.lr, conf.trainer.accelerator) == ("sgd", 0.01, "auto")
    assert conf.trainer.max_epochs == 20 and isinstance(conf.seed, int)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=resnet", "model.name='resnet' is not one of: s4, s6"),
        ("optimizer.lr=0", "optimizer.lr=0.0 must be > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be > 0"),
        ("data.batch_size=0", "data.batch_size=0 must be > 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
        ("optimizer.name=rmsprop", "optimizer.name='rmsprop' is not one of: sgd, adam, adamw"),
        ("scheduler.name=exp", "scheduler.name='exp' is not one of: none, step, plateau, onecycle, cosine"),
        ("data.val=train", "data.val='train' is not one of: test, holdout"),
        ("data.holdout_size=0", "data.holdout_size=0 must be between 1 and 59999"),
        ("data.holdout_size=60000", "data.holdout_size=60000 must be between 1 and 59999"),
        ("data.pipeline=dali", "data.pipeline='dali' is not one of: tensor, torchvision"),
        ("data.erasing=1.5", "data.erasing=1.5 must be a probability in [0, 1]"),
        ("data.translate=0.6", "data.translate=0.6 must be in [0, 0.5] (image fraction)"),
    ],
)
def test_schema_refuses_bad_values(make_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg([override]))
    assert str(err.value) == message


def _cli(*args, data_root: Path):
    env = {**os.environ, "MNIST_ARCH_DATA": str(data_root)}
    return subprocess.run([sys.executable, "-m", "mnist_arch.run", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=data_root.parent)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=resnet", "Could not find 'model/resnet'"),  # an unknown group option lists what exists
        ("optimizer=rmsprop", "Available options in 'optimizer'"),
        ("scheduler=exp", "Available options in 'scheduler'"),
        ("optimizer.lr=0", "error: optimizer.lr=0.0 must be > 0"),
        ("data.batch_size=-8", "error: data.batch_size=-8 must be > 0"),
        ("trainer.max_epochs=0", "error: trainer.max_epochs=0 must be >= 1"),
        ("data.val=holdon", "error: data.val='holdon' is not one of: test, holdout"),
        ("data.holdout_size=70000", "error: data.holdout_size=70000 must be between 1 and 59999"),
        ("trainer.max_epoch=3", "Key 'max_epoch' not in 'TrainerConf'"),  # a typo in a key
    ],
)
def test_cli_bad_input_is_one_clear_error_before_any_fetch(tmp_path, override, expected):
    done = _cli(override, data_root=tmp_path / "data")
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # nothing was fetched
    if expected.startswith("error:"):
        assert done.stderr.strip() == expected  # exactly one line
    if override.startswith("model="):
        listed = done.stderr.split("Available options in 'model':")[1].split()
        assert listed[: len(list_models())] == list_models()
