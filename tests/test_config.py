"""Hydra composition of every config group option, and the schema's refusals."""
import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_arch.config.schema import ConfigError, validate
from mnist_arch.models import list_models
from tests.conftest import every_model


def options(group: str):
    folder = importlib.resources.files("mnist_arch.conf") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def test_model_configs_mirror_the_registry(make_cfg):
    """One conf/model/<name>.yaml per registered architecture (and custom); the other options are presets, whose
    `arch` is registered (a preset inherits the family's defaults and states what differs); list_models() is
    every option but custom, and a preset's name alone builds what its composed config builds."""
    from dataclasses import asdict

    from mnist_arch.config.schema import validate
    from mnist_arch.models import build_net, list_architectures

    names = {}
    for option in options("model"):
        model = make_cfg([f"model={option}"]).model
        assert model.name == option
        names[option] = model.get("arch")
    assert sorted(o for o, arch in names.items() if arch is None) == sorted([*list_architectures(), "custom"])
    assert {arch for arch in names.values() if arch} <= set(list_architectures())
    assert sorted(list_models()) == sorted(o for o in names if o != "custom")
    for preset in (o for o, arch in names.items() if arch):
        composed = build_net(asdict(validate(make_cfg([f"model={preset}"])).model))
        by_name = build_net({"name": preset})
        assert [tuple(p.shape) for p in composed.parameters()] == [tuple(p.shape) for p in by_name.parameters()], preset


def test_defaults_are_the_reference_protocol_with_the_default_recipe(make_cfg):
    conf = validate(make_cfg())
    assert (conf.model.name, conf.data.val, conf.data.batch_size) == ("s4", "test", 128)
    assert (conf.optimizer.name, conf.optimizer.lr, conf.optimizer.nesterov) == ("sgd", 0.1, True)
    assert (conf.scheduler.name, conf.scheduler.pct_start, conf.trainer.accelerator) == ("onecycle", 0.2, "auto")
    assert conf.trainer.max_epochs == 20 and isinstance(conf.seed, int)


@pytest.mark.parametrize("experiment, batch, scheduler", [("s4_reference", 128, "none"), ("s6_reference", 64, "plateau")])
def test_the_write_ups_recipes_do_not_follow_the_default_one(make_cfg, experiment, batch, scheduler):
    conf = validate(make_cfg([f"experiment={experiment}"]))
    assert (conf.optimizer.lr, conf.optimizer.momentum, conf.optimizer.nesterov) == (0.01, 0.9, False)
    assert (conf.data.batch_size, conf.scheduler.name) == (batch, scheduler)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=resnet", f"model.name: unknown model 'resnet'; available: {every_model()}"),
        ("scheduler=piecewise scheduler.milestones=[0,5,2]", "scheduler.milestones=[0.0, 5.0, 2.0] must rise and pair "
                                                             "up with scheduler.factors=[0.5, 1.0, 0.1, 0.05, 0.0] "
                                                             "(two points at least)"),
        ("model=custom", "model=custom needs the net's class: model.net._target_=package.module.Class"),
        ("trainer.max_epochs=30", "trainer.max_epochs=30 is over budget.max_epochs=20; to play with a larger "
                                  "budget, also set budget.max_epochs=30"),
        ("budget.target_acc=1.5", "budget.target_acc=1.5 must be a fraction in (0, 1]"),
        ("optimizer.lr=0", "optimizer.lr=0.0 must be > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be > 0"),
        ("data.batch_size=0", "data.batch_size=0 must be > 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
        ("optimizer._target_=torch.optim.Nope", "optimizer._target_=torch.optim.Nope could not be built: "
                                                "AttributeError: module 'torch.optim' has no attribute 'Nope'"),
        ("scheduler.interval=batch", "scheduler.interval='batch' is not one of: epoch, step"),
        ("+optimizer.momentm=0.5", "optimizer.momentm is not a key of the optimizer group; did you mean "
                                   "optimizer.momentum?"),
        ("+data.not_a_key=1", "data.not_a_key is not a key of the data group; its keys: root, pipeline, val, "
                              "holdout_size, folds, fold, batch_size, eval_batch_size, drop_last, rotation, rotation_p, "
                              "translate, scale, brightness, contrast, jitter_p, erasing, progressive_size, "
                              "progressive_epochs, num_workers, download, verify, fetch_timeout_s"),
        ("optimizer.momentum=2", "optimizer.momentum=2.0 must be in [0, 1)"),
        ("scheduler=step scheduler.patience=3", "scheduler.patience is not an argument of "
                                                "torch.optim.lr_scheduler.StepLR (scheduler=step); it takes: "
                                                "step_size, gamma, last_epoch"),
        ("optimizer=adam optimizer.momentum=0.5", "optimizer.momentum is not an argument of torch.optim.Adam "
                                                  "(optimizer=adam); it takes: lr, betas, eps, weight_decay, amsgrad, "
                                                  "foreach, maximize, capturable, differentiable, fused, "
                                                  "decoupled_weight_decay"),
        ("scheduler=none scheduler.gamma=0.5", "scheduler.gamma does nothing with scheduler=none (a constant lr)"),
        ("scheduler.gamma=0.5", "scheduler.gamma is not an argument of torch.optim.lr_scheduler.OneCycleLR "
                                "(scheduler=onecycle); it takes: max_lr, total_steps, epochs, steps_per_epoch, "
                                "pct_start, anneal_strategy, cycle_momentum, base_momentum, max_momentum, "
                                "div_factor, final_div_factor, three_phase, last_epoch"),
        ("+trainer.overfit_batchs=3", "trainer.overfit_batchs is not an argument of pl.Trainer; did you mean "
                                      "trainer.overfit_batches?"),
        ("+trainer.callbacks=[]", "trainer.callbacks is set by the callbacks group, not here"),
        ("+callbacks.not_a_key=1", "callbacks.not_a_key is not a key of the callbacks group; its keys: rules, "
                                   "stop_at_target, checkpoint, lr_monitor, plots, progress, progress_refresh, ema"),
        ("callbacks.ema=1", "callbacks.ema=1.0 must be in [0, 1) (0: off; e.g. 0.99)"),
        ("label_smoothing=-0.1", "label_smoothing=-0.1 must be in [0, 1)"),
        ("data.progressive_size=4", "data.progressive_size=4 must be in [8, 56] pixels"),
        ("data.progressive_epochs=20", "data.progressive_epochs=20 would resize every epoch of trainer.max_epochs=20: "
                                       "the net must see 28x28 images before it is scored"),
        ("+budget.max_param=1000", "budget.max_param is not a key of the budget group; did you mean "
                                   "budget.max_params?"),
        ("+model.width=3", "model.width is not a key of the model group; its keys: name, arch, net"),
        ("+sed=3", "sed is not a key of the config; did you mean seed?"),
        ("data.val=train", "data.val='train' is not one of: test, holdout, fold"),
        ("data.holdout_size=0", "data.holdout_size=0 must be between 1 and 59999"),
        ("data.holdout_size=60000", "data.holdout_size=60000 must be between 1 and 59999"),
        ("data.pipeline=dali", "data.pipeline='dali' is not one of: tensor, torchvision"),
        ("trainer.precision=bf17-mixed", "trainer.precision='bf17-mixed' is not one of: auto, 32-true, bf16-mixed, "
                                         "16-mixed, bf16-true, 16-true, 64-true, 32, 16, bf16, 64, transformer-engine, "
                                         "transformer-engine-float16"),
        ("data.erasing=1.5", "data.erasing=1.5 must be a probability in [0, 1]"),
        ("data.translate=0.6", "data.translate=0.6 must be in [0, 0.5] (image fraction)"),
        ("test_weights=last", "test_weights='last' is not one of: auto, best, final"),
        ("test_weights=best", "test_weights=best needs data.val=holdout or fold: with val=test the best epoch is chosen "
                              "on the test set"),
    ],
)
def test_schema_refuses_bad_values(make_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(override.split()))
    assert str(err.value) == message


def _cli(*args, data_root: Path):
    env = {**os.environ, "MNIST_ARCH_DATA": str(data_root)}
    return subprocess.run([sys.executable, "-m", "mnist_arch.run", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=data_root.parent)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=resnet", "error: model=resnet is not an option of model; its options: "),  # lists what exists
        ("model=s44", "error: model=s44 is not an option of model; did you mean model=s4? (its options: "),
        ("model=s5", "error: model=s5 is not an option of model; did you mean model=s4 or model=s6? (its options: "),
        ("optimizer=rmsprop", "error: optimizer=rmsprop is not an option of optimizer; its options: adam, adamw, sgd"),
        ("scheduler=exp", "error: scheduler=exp is not an option of scheduler; its options: cosine, none, "),
        ("optimizer.lr=0", "error: optimizer.lr=0.0 must be > 0"),
        ("data.batch_size=-8", "error: data.batch_size=-8 must be > 0"),
        ("trainer.max_epochs=0", "error: trainer.max_epochs=0 must be >= 1"),
        ("trainer.max_epochs=abc", "error: Error merging override trainer.max_epochs=abc: Value 'abc' of type 'str' "
                                   "could not be converted to Integer"),
        ("data.val=holdon", "error: data.val='holdon' is not one of: test, holdout, fold"),
        ("data.holdout_size=70000", "error: data.holdout_size=70000 must be between 1 and 59999"),
        ("trainer.max_epoch=3", "error: trainer.max_epoch is not a key of the trainer group; did you mean "
                                "trainer.max_epochs?"),  # a typo in a key
        ("trainer.max_epochs=25", "error: trainer.max_epochs=25 is over budget.max_epochs=20"),
        ("+trainer.not_a_knob=1", "error: trainer.not_a_knob is not an argument of pl.Trainer"),
        ("+optimizer.weight_decy=5e-4", "error: optimizer.weight_decy is not a key of the optimizer group; did you "
                                        "mean optimizer.weight_decay?"),
        ("data.batch_size=[1", "error: no viable alternative at input '[1'"),  # Hydra's grammar, one line
        ("model=0", "error: Config group override must be a string or a list. Got int"),  # Hydra's ValueError
        ("model=custom model.net._target_=subprocess.run +model.net.args=[touch,{marker}]",
         "error: model.net._target_=subprocess.run is a function, not a subclass of Module"),  # never called
        ("model=custom model.net._target_=collections.OrderedDict", "error: model.net._target_=collections.OrderedDict "
                                                                    "is a class, not a subclass of Module"),
    ],
)
def test_cli_bad_input_is_one_clear_error_before_any_fetch(tmp_path, monkeypatch, capsys, override, expected):
    """The run's entry point, in this process (a fresh process for a few of them below)."""
    from mnist_arch.commands import run
    from tests.conftest import hydra_command

    monkeypatch.setenv("MNIST_ARCH_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    code = hydra_command(run.main, override.format(marker=tmp_path / "marker").split(), monkeypatch)
    err = capsys.readouterr().err
    assert not (tmp_path / "marker").exists()
    assert err.startswith(expected), err
    assert len(err.strip().splitlines()) == 1  # exactly one line, never Hydra's error screen
    assert code == 2  # refused before anything ran
    assert not (tmp_path / "data").exists()  # nothing was fetched
    if override == "model=resnet":
        assert err.strip().split("its options: ")[1].split(", ") == options("model")


@pytest.mark.parametrize("override", ["model=resnet", "trainer.max_epoch=3", "optimizer.lr=0"])
def test_as_typed_a_bad_override_is_one_line_and_exit_2(tmp_path, override):
    done = _cli(override, data_root=tmp_path / "data")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("overrides, message", [
    (["logger=csv", "+logger.csv.flush_log_every_n_steps=5"], "logger.csv.flush_log_every_n_steps is not an argument of "
     "pytorch_lightning.loggers.CSVLogger; did you mean logger.csv.flush_logs_every_n_steps?"),
    (["logger=csv", "+logger.csv.graph=true"], "logger.csv.graph is not an argument of "
     "pytorch_lightning.loggers.CSVLogger; it takes: name, version, prefix, flush_logs_every_n_steps"),
    (["+logger.tensorboard.grpah=false"], "logger.tensorboard: pytorch_lightning.loggers.TensorBoardLogger refused "
     "its arguments (SummaryWriter.__init__() got an unexpected keyword argument 'grpah')"),
    (["logger.tensorboard._target_=torch.nn.Linear"], "logger.tensorboard._target_=torch.nn.Linear is a class, not "
     "a subclass of Logger"),
    (["+logger.mine=3"], "logger.mine is not a logger: an entry needs _target_ (a Lightning logger class) and that "
     "class's arguments, e.g. conf/logger/csv.yaml"),
    (["logger=[tensorboard,csv]"], None),
])
def test_each_logger_of_the_group_is_built_in_the_run_dir_or_refused_by_name(make_cfg, tmp_path, overrides, message):
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from mnist_arch.train.job import build_loggers
    from tests.nets import TinyConv

    conf = validate(make_cfg(overrides))
    if message is None:
        loggers = build_loggers(conf, tmp_path, TinyConv(), "the layer table")
        assert [type(logger) for logger in loggers] == [TensorBoardLogger, CSVLogger]
        assert [Path(logger.log_dir) for logger in loggers] == [tmp_path / "tensorboard", tmp_path / "csv"]
        return
    with pytest.raises(ConfigError) as err:
        build_loggers(conf, tmp_path, TinyConv(), "the layer table")
    assert str(err.value) == message


@pytest.mark.parametrize("override, message", [
    ("+model.net.dropuot=0.1", "model.net.dropuot is not an argument of model s4; did you mean model.net.dropout?"),
    ("model=frontier_4k", None),
])
def test_a_net_argument_is_refused_by_name_when_the_net_is_built(make_cfg, override, message):
    from dataclasses import asdict

    from mnist_arch.models import build_net

    conf = validate(make_cfg([override]))
    if message is None:  # a preset's arguments build its net
        assert sum(p.numel() for p in build_net(asdict(conf.model)).parameters()) == 3_670
        return
    with pytest.raises(ConfigError) as err:
        build_net(asdict(conf.model))
    assert str(err.value) == message


def test_reference_experiments_set_the_write_ups_recipes(make_cfg):
    s6 = validate(make_cfg(["experiment=s6_reference"]))
    assert (s6.model.name, s6.data.batch_size, s6.optimizer.name, s6.optimizer.lr, s6.optimizer.momentum) == \
        ("s6", 64, "sgd", 0.01, 0.9)
    assert (s6.scheduler.name, s6.scheduler.patience, s6.scheduler.factor, s6.trainer.max_epochs) == \
        ("plateau", 2, 0.5, 20)
    s4 = validate(make_cfg(["experiment=s4_reference"]))
    assert (s4.model.name, s4.data.batch_size, s4.optimizer.lr, s4.scheduler.name, s4.trainer.max_epochs) == \
        ("s4", 128, 0.01, "none", 10)
    assert s4.model.net["dropout"] == 0.15 and s6.model.net["dropout"] == 0.25


def test_a_preset_states_only_what_differs_and_the_speedrun_is_frontier_20k(make_cfg):
    family = make_cfg(["model=convnet"]).model.net
    for preset in ("frontier_4k", "frontier_8k", "public_7918"):
        net = make_cfg([f"model={preset}"]).model.net
        assert set(net) == set(family) and net.stages != family.stages  # inherited keys, its own shape
    assert make_cfg(["model=speedrun"]).model.net == make_cfg(["model=frontier_20k"]).model.net
