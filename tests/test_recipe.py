"""The recipe from config: each optimizer and scheduler option builds the class its name says, with its
hyperparameters; weight decay skips norm weights and biases; the schema, the YAML and the classes agree;
a checkpoint rebuilds its own net."""
import dataclasses
import importlib.resources
import inspect
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from mnist_arch.config.recipe import PiecewiseLinearLR, build_optimizer, build_scheduler
from mnist_arch.config.schema import DataConf, validate
from mnist_arch.config.schema import Budget
from mnist_arch.data import MNISTDataModule
from mnist_arch.models import build_net, net_from_checkpoint
from tests.conftest import datamodule, fast_overrides


def options(group: str):
    folder = importlib.resources.files("mnist_arch.conf") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))


def yaml_of(group: str, option: str) -> dict:
    return yaml.safe_load((importlib.resources.files("mnist_arch.conf") / group / f"{option}.yaml").read_text())


def built(make_cfg, overrides, total_batches=100, max_epochs=10):
    conf = validate(make_cfg(overrides))
    net = build_net(dataclasses.asdict(conf.model))
    optimizer = build_optimizer(dataclasses.asdict(conf.optimizer), net)
    return net, optimizer, build_scheduler(dataclasses.asdict(conf.scheduler), optimizer, total_batches, max_epochs)


@pytest.mark.parametrize("option, cls, expected", [
    ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0}),
    ("adam", torch.optim.Adam, {"lr": 0.001, "betas": (0.9, 0.999), "weight_decay": 0.0}),
    ("adamw", torch.optim.AdamW, {"lr": 0.001, "betas": (0.9, 0.999), "weight_decay": 0.01}),
])
def test_each_optimizer_is_what_its_name_says(make_cfg, option, cls, expected):
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    _, optimizer, _ = built(make_cfg, [f"optimizer={option}", "scheduler=none"])  # a scheduler moves lr/momentum
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert {k: tuple(group[k]) if k == "betas" else group[k] for k in expected} == expected
    _, tuned, _ = built(make_cfg, [f"optimizer={option}", "optimizer.lr=0.123", "scheduler=none"])
    assert tuned.param_groups[0]["lr"] == 0.123  # an override reaches the class


def test_weight_decay_skips_norm_weights_and_biases_unless_asked(make_cfg):
    net, optimizer, _ = built(make_cfg, ["optimizer.weight_decay=5e-4"])
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 4 for p in decayed["params"])  # conv weights only
    bn_weights = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bn_weights <= {id(p) for p in plain["params"]}
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 17_120  # every parameter once
    _, everything, _ = built(make_cfg, ["optimizer.weight_decay=5e-4", "optimizer.decay_norm_and_bias=true"])
    assert [g["weight_decay"] for g in everything.param_groups] == [5e-4]


@pytest.mark.parametrize("option, cls, interval, expected", [
    ("none", None, None, {}),
    ("step", torch.optim.lr_scheduler.StepLR, "epoch", {"step_size": 5, "gamma": 0.1}),
    ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau, "epoch", {"patience": 2, "factor": 0.5, "mode": "min"}),
    ("onecycle", torch.optim.lr_scheduler.OneCycleLR, "step", {"total_steps": 100}),
    ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, "epoch", {"T_max": 20, "eta_min": 0.0}),
    ("piecewise", PiecewiseLinearLR, "epoch", {"milestones": [0, 2, 8, 12, 15], "factors": [0.5, 1.0, 0.1, 0.05, 0.0]}),
])
def test_each_scheduler_is_what_its_name_says(make_cfg, option, cls, interval, expected):
    assert options("scheduler") == ["cosine", "none", "onecycle", "piecewise", "plateau", "step"]
    _, optimizer, scheduler = built(make_cfg, [f"scheduler={option}"], total_batches=100)
    if cls is None:
        assert scheduler is None
        return
    assert type(scheduler["scheduler"]) is cls and scheduler["interval"] == interval
    assert {k: getattr(scheduler["scheduler"], k) for k in expected} == expected
    if option == "plateau":
        assert scheduler["monitor"] == "val/loss"
    if option == "onecycle":  # the peak is optimizer.lr, reached after pct_start of the steps
        assert optimizer.param_groups[0]["max_lr"] == 0.1 and optimizer.param_groups[0]["initial_lr"] == 0.1 / 25


def test_piecewise_follows_the_published_3762_schedule(make_cfg):
    """The log of public_3762's claimed run lists these learning rates for its 15 epochs."""
    published = [0.05, 0.075, 0.1, 0.085, 0.07, 0.055, 0.04, 0.025, 0.01, 0.00875, 0.0075, 0.00625, 0.005,
                 0.003333, 0.001667]
    _, optimizer, scheduler = built(make_cfg, ["experiment=public_3762"])
    seen = []
    for _ in published:
        seen.append(round(optimizer.param_groups[0]["lr"], 6))
        optimizer.step()
        scheduler["scheduler"].step()
    assert seen == published


def test_onecycle_stepped_per_epoch_spans_the_epochs(make_cfg):
    _, _, scheduler = built(make_cfg, ["scheduler=onecycle", "scheduler.interval=epoch"], max_epochs=7)
    assert scheduler["scheduler"].total_steps == 7


@pytest.mark.parametrize("group", ["model", "data", "optimizer", "scheduler", "trainer", "callbacks", "logger",
                                   "budget", "experiment", "search"])
def test_every_option_of_every_group_composes_validates_and_builds(make_cfg, group, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # logger=mlflow: not in outputs/
    for option in options(group):
        extra = ["model.net._target_=tests.nets.TinyConv"] if option == "custom" else []
        conf = validate(make_cfg([f"{group}={option}", *extra]))
        net = build_net(dataclasses.asdict(conf.model))
        optimizer = build_optimizer(dataclasses.asdict(conf.optimizer), net)
        build_scheduler(dataclasses.asdict(conf.scheduler), optimizer, 10, conf.trainer.max_epochs)
        if group in ("model", "optimizer", "scheduler"):
            assert getattr(conf, group).name == option
        if group == "logger":  # built too, in a run dir of its own
            from mnist_arch.train.job import build_loggers

            with tempfile.TemporaryDirectory() as run_dir:
                loggers = build_loggers(conf, Path(run_dir), net, "")
                assert [type(logger).__name__.lower() for logger in loggers] == [f"{option}logger"]
                for logger in loggers:  # closed before the folder goes: TensorBoard's writer thread writes on
                    logger.finalize("success")


def test_schema_yaml_and_classes_agree():
    data = yaml_of("data", "mnist")
    assert list(data) == [f.name for f in dataclasses.fields(DataConf)]
    arguments = inspect.signature(MNISTDataModule).parameters.values()
    assert [p.name for p in arguments] == [*data, "seed"]  # the DataModule takes the group's keys, and the seed,
    assert all(p.default is p.empty for p in arguments)  # with no defaults of its own: the YAML holds them
    assert list(yaml_of("budget", "default")) == [f.name for f in dataclasses.fields(Budget)]
    from mnist_arch.config.schema import CallbacksConf, OptimizerConf, SchedulerConf
    from mnist_arch.train.callbacks import SWITCHES

    assert set(yaml_of("callbacks", "default")) == {f.name for f in dataclasses.fields(CallbacksConf)}
    assert set(SWITCHES) == set(yaml_of("callbacks", "default")) - {"progress", "progress_refresh"}
    for option in options("logger"):  # one entry each, under the option's own name: logger=[a,b] keeps both
        assert list(yaml_of("logger", option)) == [option] and "_target_" in yaml_of("logger", option)[option]
    for group, schema in [("optimizer", OptimizerConf), ("scheduler", SchedulerConf)]:
        for option in options(group):
            assert set(yaml_of(group, option)) <= {f.name for f in dataclasses.fields(schema)}, option
    from mnist_arch.models.registry import MODELS

    for option in options("model"):  # a registered net's YAML gives its constructor's own defaults
        spec = yaml_of("model", option)
        if spec["name"] in MODELS:
            defaults = {k: p.default for k, p in inspect.signature(MODELS[spec["name"]]).parameters.items()}
            as_lists = yaml.safe_load(yaml.safe_dump({k: _lists(defaults[k]) for k in spec["net"]}))
            assert spec["net"] == as_lists, option


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_a_checkpoint_rebuilds_its_net_alone(make_cfg, mnist_root, tmp_path):
    """weights_only=True, no config, no Classifier: the rebuilt net scores the test split as the run did."""
    from mnist_arch.train import job as training

    overrides = fast_overrides(mnist_root) + ["model=custom", "model.net._target_=tests.nets.TinyConv",
                                              "+model.net.width=5"]
    record = training.train(make_cfg(overrides), tmp_path / "run")
    net, checkpoint = net_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", ["tests.nets.TinyConv"])
    assert checkpoint["net_spec"] == {"name": "custom", "arch": None,
                                      "net": {"_target_": "tests.nets.TinyConv", "width": 5}}
    assert not net.training and net.body[0].out_channels == 5
    data = datamodule(mnist_root, eval_batch_size=40)
    data.setup("test")
    with torch.no_grad():
        right = sum((net(x).argmax(1) == y).sum().item() for x, y in data.test_dataloader())
    assert record.test_ckpt == "final" and record.test_acc == pytest.approx(right / 80, abs=1e-6)

    best, _ = net_from_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", ["tests.nets.TinyConv"])
    assert isinstance(best, torch.nn.Module)


def test_a_checkpoint_of_another_architecture_is_one_clear_error(tmp_path, make_cfg, mnist_root):
    from mnist_arch.errors import ConfigError
    from mnist_arch.train import job as training

    training.train(make_cfg(fast_overrides(mnist_root) + ["trainer.max_epochs=1", "callbacks.plots=false"]),
              tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["net_spec"] = {"name": "s6", "net": {"dropout": 0.25}}  # as if s4's file claimed to be s6
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=r"other.ckpt: its weights do not fit s6 as built now \(bn1.bias: missing "
                                          r"from the checkpoint\)$"):
        net_from_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="nothing.ckpt: no such file"):
        net_from_checkpoint(tmp_path / "nothing.ckpt")
