"""End-to-end runs: the real composed config, DataModule, Trainer and loggers, on synthetic IDX files."""
import dataclasses
import json
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_arch.commands import run
from mnist_arch.results.record import RunRecord
from mnist_arch.train import job as training
from tests.conftest import ctrl_c_at, datamodule, fast_overrides, hydra_command

SUMMARY_KEYS = {"model", "params", "epochs_run", "best_val_acc", "best_epoch", "val_acc", "test_acc", "seed",
                "device", "wall_time_s", "git_commit", "versions", "status"}


def test_run_writes_summary_checkpoints_config_and_events(make_cfg, mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    summary = training.train(make_cfg(fast_overrides(mnist_root) + ["model=s6", "seed=5"]), run_dir)

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary.to_dict() and SUMMARY_KEYS <= set(on_disk)
    assert on_disk["status"] == "completed" and on_disk["model"] == "s6" and on_disk["params"] == 19_866
    assert on_disk["epochs_run"] == 2 and len(on_disk["val_acc"]) == 2 and on_disk["seed"] == 5
    # best val acc and epoch against what Lightning itself kept: the module's running max (TensorBoard's
    # val/acc_best) and the epoch ModelCheckpoint wrote best.ckpt at
    best_ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert on_disk["best_epoch"] == best_ckpt["epoch"] + 1
    assert 0 <= on_disk["test_acc"] <= 1 and on_disk["test_ckpt"] == "final"
    assert on_disk["device"].startswith("cpu") and on_disk["versions"]["torch"]

    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "max_epochs: 2" in (run_dir / "config.yaml").read_text()

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= set(scalars)
    assert [round(e.value, 6) for e in events.Scalars("val/acc")] == on_disk["val_acc"]
    assert round(events.Scalars("val/acc_best")[-1].value, 6) == on_disk["best_val_acc"]
    assert any(tag.startswith("lr-") for tag in scalars)


def test_holdout_run_tests_the_best_checkpoint_and_csv_logger(make_cfg, mnist_root, tmp_path):
    overrides = fast_overrides(mnist_root) + ["data.val=holdout", "data.holdout_size=64", "logger=csv"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    assert summary.val_split == "holdout" and summary.test_ckpt == "best"
    assert summary.test_acc is not None
    assert "val/acc" in (tmp_path / "run" / "csv" / "metrics.csv").read_text()


def test_holdout_run_keeps_every_epoch_and_last_is_the_last_epoch(make_cfg, mnist_root, tmp_path):
    """Best epoch 1 of 3: testing the best checkpoint must not roll the history back to epoch 1, and
    last.ckpt must be epoch 3 (Lightning's own save_last only follows the best checkpoint)."""
    import torch

    overrides = fast_overrides(mnist_root) + ["data.val=holdout", "data.holdout_size=64", "trainer.max_epochs=3",
                                              "model=custom", "model.net._target_=tests.nets.ConstantScores"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    assert summary.best_epoch == 1 and summary.epochs_run == 3 and len(summary.val_acc) == 3
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)
    assert last["epoch"] == 2 and len(last["callbacks"]["History"]["val_acc"]) == 3 and best["epoch"] == 0


def test_test_weights_final_tests_the_last_epoch_weights(make_cfg, mnist_root, tmp_path):
    """With val=holdout the default tests the best-on-holdout checkpoint; test_weights=final must test the
    last epoch's weights instead: its test acc is that of last.ckpt, recomputed here by hand."""
    import torch

    from tests.nets import TinyConv

    overrides = fast_overrides(mnist_root) + ["data.val=holdout", "data.holdout_size=64", "trainer.max_epochs=3",
                                              "model=custom", "model.net._target_=tests.nets.TinyConv",
                                              "test_weights=final"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    assert summary.test_ckpt == "final"
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    net = TinyConv()
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    data = datamodule(mnist_root, val="holdout", holdout_size=64,
                                 eval_batch_size=40)
    data.setup("test")
    net.eval()
    with torch.no_grad():
        right = sum((net(x).argmax(1) == y).sum().item() for x, y in data.test_dataloader())
    assert summary.test_acc == pytest.approx(right / len(data.splits["test"][0]), abs=1e-6)


@pytest.mark.parametrize(
    "extra",
    [["data.pipeline=torchvision", "data.rotation=10", "data.erasing=0.2"],
     ["channels_last=true", "data.rotation=10", "data.translate=0.1", "data.scale=0.1", "data.erasing=0.2"]],
    ids=["torchvision-pipeline", "tensor-pipeline-nhwc"],
)
def test_pipelines_and_speed_flags_train_end_to_end(make_cfg, mnist_root, tmp_path, extra):
    summary = training.train(make_cfg(fast_overrides(mnist_root) + extra), tmp_path / "run")
    assert summary.status == "completed" and summary.epochs_run == 2
    assert all(0 <= acc <= 1 for acc in summary.val_acc)


@pytest.mark.parametrize(
    "scheduler, check",
    [
        ("none", lambda lr: lr == [0.1, 0.1]),
        ("step", lambda lr: lr == [0.1, 0.05]),
        ("plateau", lambda lr: lr[0] == 0.1),
        ("onecycle", lambda lr: lr[0] == pytest.approx(0.1 / 25) and lr[1] > lr[0]),
        ("cosine", lambda lr: lr[0] == 0.1 and lr[1] < lr[0]),
    ],
)
def test_each_scheduler_drives_the_learning_rate(make_cfg, mnist_root, tmp_path, scheduler, check):
    overrides = fast_overrides(mnist_root) + [f"scheduler={scheduler}", "callbacks.checkpoint=false"]
    if scheduler == "step":
        overrides += ["scheduler.step_size=1", "scheduler.gamma=0.5"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    assert summary.status == "completed"
    assert check(summary.lr), summary.lr


def test_any_trainer_argument_reaches_the_trainer(make_cfg, mnist_root, tmp_path, monkeypatch):
    """+trainer.<name> for a pl.Trainer argument the schema does not type: max_steps=5 stops the run after 5
    optimizer steps (2 epochs of 4 batches would be 8), and config.yaml keeps the key."""
    from mnist_arch.config.schema import TrainerConf
    from mnist_arch.train.module import Classifier

    assert "max_steps" not in {f.name for f in dataclasses.fields(TrainerConf)}  # untyped: passed through
    seen, real_step = [], Classifier.training_step

    def counted(self, batch, batch_idx):
        seen.append((self.current_epoch, batch_idx))
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", counted)
    summary = training.train(make_cfg(fast_overrides(mnist_root) + ["+trainer.max_steps=5", "scheduler=none"]),
                             tmp_path / "run")
    assert summary.status == "completed" and seen == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert "max_steps: 5" in (tmp_path / "run" / "config.yaml").read_text()


def test_same_seed_deterministic_runs_agree(make_cfg, mnist_root, tmp_path):
    overrides = fast_overrides(mnist_root) + ["trainer.deterministic=true", "seed=11", "data.rotation=10"]
    first = training.train(make_cfg(overrides), tmp_path / "a")
    second = training.train(make_cfg(overrides), tmp_path / "b")
    other = training.train(make_cfg(overrides[:-2] + ["seed=12", "data.rotation=10"]), tmp_path / "c")
    assert first.val_loss == second.val_loss and first.train_loss == second.train_loss
    assert other.train_loss != first.train_loss


def test_cli_entry_point_prints_the_headline_last(mnist_root, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "hydra_run"
    assert hydra_command(run.main, [*fast_overrides(mnist_root), f"hydra.run.dir={run_dir}"], monkeypatch) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = RunRecord.read(run_dir)
    # synthetic data never reaches 99.4% in two short epochs: the verdict says so
    assert last.startswith(f"s4 · 17,120 params ✓ ≤20,000 · no FC ✓ · best {summary.best_val_acc:.2%} "
                           f"at epoch {summary.best_epoch} ✗ (target 99.40%, ≤20 epochs, 2 run, val=test)")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert summary.overrides[-1] == "trainer.log_every_n_steps=1"


def test_ctrl_c_keeps_completed_epochs_and_says_interrupted(make_cfg, mnist_root, tmp_path, monkeypatch):
    from mnist_arch.train.module import Classifier

    real_step = Classifier.training_step

    def interrupt_in_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", interrupt_in_second_epoch)
    # Lightning ignores further Ctrl-C during its shutdown; give the test process its handler back.
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    summary = training.train(make_cfg(fast_overrides(mnist_root)), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary.status == on_disk["status"] == "interrupted"
    assert on_disk["epochs_run"] == 1 and on_disk["test_acc"] is None
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_a_crash_is_recorded_as_failed_and_raised(make_cfg, mnist_root, tmp_path, monkeypatch):
    from mnist_arch.train.module import Classifier

    def broken(self, batch, batch_idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(Classifier, "training_step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        training.train(make_cfg(fast_overrides(mnist_root)), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["error"] == "RuntimeError: boom"


@pytest.mark.parametrize("name, budget", [("frontier_4k", 4_000), ("frontier_8k", 8_000), ("frontier_20k", 20_000)])
def test_frontier_experiments_compose_and_run(make_cfg, mnist_root, tmp_path, name, budget):
    overrides = [o for o in fast_overrides(mnist_root) if not o.startswith("trainer.max_epochs")]
    cfg = make_cfg([f"experiment={name}", *overrides, "trainer.fast_dev_run=true", "data.holdout_size=64"])
    assert cfg.budget.max_params == budget and cfg.data.val == "holdout"
    summary = training.train(cfg, tmp_path / "run")
    assert summary.status == "completed" and summary.params <= budget and summary.verdict.no_fc_ok
    assert summary.model == name and summary.net_spec["arch"] == "convnet"


@pytest.mark.parametrize("name, params, budget", [("public_3762", 3_762, 4_000), ("public_7918", 7_918, 8_000),
                                                  ("public_9994", 9_994, 10_000)])
def test_public_experiments_compose_and_run(make_cfg, mnist_root, tmp_path, name, params, budget):
    overrides = [o for o in fast_overrides(mnist_root) if not o.startswith(("trainer.max_epochs", "data.batch_size"))]
    cfg = make_cfg([f"experiment={name}", *overrides, "trainer.fast_dev_run=true"])
    assert cfg.budget.max_params == budget and cfg.data.val == "test" and cfg.trainer.max_epochs == 15
    summary = training.train(cfg, tmp_path / "run")
    assert summary.status == "completed" and summary.params == params and summary.model == name
    assert summary.net_spec["arch"] == "convnet"


# --- the speedrun levers: label smoothing, an EMA of the weights, progressive resizing ---------------


def test_label_smoothing_shapes_the_training_loss_only(make_cfg, mnist_root, tmp_path):
    """A net of fixed scores (lr 1e-12: they do not move) over one whole epoch: the training loss is the
    smoothed cross-entropy of every training label, the val loss the plain one, computed here by hand."""
    import math

    from tests.conftest import N_TEST, N_TRAIN, synthetic_split

    eps = 0.3
    overrides = [o for o in fast_overrides(mnist_root) if "limit_train_batches" not in o]
    overrides += ["model=custom", "model.net._target_=tests.nets.ConstantScores", "optimizer.lr=1e-12",
                  "scheduler=none", "trainer.max_epochs=1", f"label_smoothing={eps}", "callbacks.checkpoint=false"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    log_z = math.log(math.exp(20) + 9)
    plain = {k: log_z - (20 if k == 0 else 0) for k in range(10)}  # -log p(k) for the scores [20, 0, ..., 0]
    smooth = {k: (1 - eps) * plain[k] + eps * sum(plain.values()) / 10 for k in range(10)}
    train_labels, val_labels = synthetic_split(N_TRAIN, 0)[1], synthetic_split(N_TEST, 1)[1]
    assert summary.train_loss[0] == pytest.approx(sum(smooth[k] for k in train_labels) / N_TRAIN, rel=1e-4)
    assert summary.val_loss[0] == pytest.approx(sum(plain[k] for k in val_labels) / N_TEST, rel=1e-4)


def test_ema_weights_are_validated_saved_and_tested(make_cfg, mnist_root, tmp_path, monkeypatch):
    """callbacks.ema=0.5: the weights last.ckpt saves are the EMA of the raw weights after every step,
    recomputed here from the raw weights seen at each step's start; the last validation and the test
    (val=test, final weights) score exactly those weights."""
    import torch
    import torch.nn.functional as F

    from mnist_arch.train.module import Classifier
    from tests.nets import TinyConv

    raw, real_step = [], Classifier.training_step

    def recorded(self, batch, batch_idx):
        raw.append({k: v.detach().clone() for k, v in self.net.named_parameters()})
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", recorded)
    overrides = fast_overrides(mnist_root) + ["model=custom", "model.net._target_=tests.nets.TinyConv",
                                              "callbacks.ema=0.5"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    final_raw = {k.removeprefix("net."): v for k, v in last["current_model_state"].items() if k.startswith("net.")}
    after_each_step = raw[1:] + [final_raw]  # a step's start sees the weights the step before left
    assert len(after_each_step) == 8 and summary.status == "completed"
    for name in final_raw:
        ema = after_each_step[0][name]
        for weights in after_each_step[1:]:
            ema = 0.5 * ema + 0.5 * weights[name]
        assert torch.allclose(last["state_dict"][f"net.{name}"], ema, atol=1e-6), name
        assert not torch.allclose(ema, final_raw[name])
    net = TinyConv().eval()
    net.load_state_dict({k.removeprefix("net."): v for k, v in last["state_dict"].items() if k.startswith("net.")})
    data = datamodule(mnist_root, eval_batch_size=40)
    data.setup("test")
    images, labels = zip(*data.test_dataloader())
    with torch.no_grad():
        logits = net(torch.cat(images))
    labels = torch.cat(labels)
    assert summary.val_loss[-1] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    assert summary.test_acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_progressive_resizing_trains_small_then_full_size(make_cfg, mnist_root, tmp_path, monkeypatch):
    from mnist_arch.train.module import Classifier

    seen, real_train, real_val = set(), Classifier.training_step, Classifier.validation_step

    def train_step(self, batch, batch_idx):
        seen.add(("train", self.current_epoch, tuple(batch[0].shape[2:])))
        return real_train(self, batch, batch_idx)

    def val_step(self, batch, batch_idx):
        seen.add(("val", self.current_epoch, tuple(batch[0].shape[2:])))
        return real_val(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", train_step)
    monkeypatch.setattr(Classifier, "validation_step", val_step)
    overrides = fast_overrides(mnist_root) + ["model=custom", "model.net._target_=tests.nets.TinyConv",
                                              "data.progressive_size=16", "data.progressive_epochs=1",
                                              "trainer.num_sanity_val_steps=0"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    assert summary.status == "completed"
    assert seen == {("train", 0, (16, 16)), ("val", 0, (28, 28)), ("train", 1, (28, 28)), ("val", 1, (28, 28))}


@pytest.mark.parametrize("overrides, message", [
    (["model=s4", "data.progressive_epochs=1"], "data.progressive_size=20: the net"),
    (["model=custom", "model.net._target_=tests.nets.WrongOutput", "data.progressive_epochs=1",
      "data.progressive_size=28"], r"the net must map \(N, 1, 28, 28\) to \(N, 10\); it gave \(2, 7\) for N=2"),
])
def test_progressive_resizing_refuses_a_net_that_cannot_take_the_size(make_cfg, mnist_root, tmp_path, overrides,
                                                                      message):
    from mnist_arch.config.schema import ConfigError

    with pytest.raises(ConfigError, match=message):
        training.train(make_cfg(fast_overrides(mnist_root) + overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_compile_true_compiles_the_net_in_place_keeping_its_keys(make_cfg):
    """compile=true: the module torch.compiles its net (Module.compile, in place), so checkpoints keep the
    plain net's state-dict keys (net_from_checkpoint rebuilds it uncompiled)."""
    plain = training.setup(make_cfg(["model=s4"]))
    compiled = training.setup(make_cfg(["model=s4", "compile=true"]))
    assert compiled.model.net._compiled_call_impl is not None and plain.model.net._compiled_call_impl is None
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())


def test_a_checkpoint_from_another_run_starts_a_new_run_dir(make_cfg, mnist_root, tmp_path):
    """ckpt_path=<a file>: the new run dir goes on from that run's last epoch and says where it came from.
    (A constant lr: a one-cycle schedule is sized to its run's epochs and resumes only with the same ones.)"""
    overrides = fast_overrides(mnist_root) + ["scheduler=none", "trainer.max_epochs=3"]
    first = training.train(make_cfg(overrides[:-1] + ["trainer.max_epochs=2"]), tmp_path / "first")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    second = training.train(make_cfg(overrides + [f"ckpt_path={last}"]), tmp_path / "second")
    assert second.resumed_from == str(last) and second.epochs_run == 3
    assert second.val_acc[:2] == first.val_acc  # the first two epochs are the first run's
    assert (tmp_path / "second" / "checkpoints" / "last.ckpt").is_file()


def test_ctrl_c_exits_130_and_says_how_to_resume(mnist_root, tmp_path, monkeypatch, capsys):
    ctrl_c_at(monkeypatch, epoch=1, batch=1)
    code = hydra_command(run.main, [*fast_overrides(mnist_root), f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    assert code == 130 and RunRecord.read(tmp_path / "run").status == "interrupted"
    assert f"hydra.run.dir={tmp_path / 'run'} ckpt_path=last" in capsys.readouterr().err


@pytest.mark.parametrize("job, stamp", [(None, r"\d\d-\d\d-\d\d"), ("4242", "slurm-4242")])
def test_the_run_dir_is_named_by_time_or_by_the_slurm_job(make_cfg, monkeypatch, job, stamp):
    """outputs/<date>/<HH-MM-SS>_<model>, or <slurm-JOBID>_<model> inside a Slurm job (its tasks share it)."""
    import re

    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    if job:
        monkeypatch.setenv("SLURM_JOB_ID", job)
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    setup_globals()  # Hydra's ${now:} resolver
    cfg = make_cfg(["model=s6"], hydra=True)
    OmegaConf.clear_cache(cfg)  # run_stamp caches its value per config
    assert re.fullmatch(rf"outputs/\d{{4}}-\d\d-\d\d/{stamp}_s6", cfg.hydra.run.dir)


def test_bf16_mixed_trains_on_the_cpu_and_its_checkpoint_stays_fp32(make_cfg, mnist_root, tmp_path):
    """trainer.precision=bf16-mixed end to end on the CPU: the rules judge the net, training and the test run
    under autocast, the checkpoint holds fp32 weights (what evaluate and export read), and evaluating them in
    fp32 lands within a few images of the run's own bf16 test."""
    from mnist_arch.config.schema import validate
    from mnist_arch.inference import scoring, trained

    overrides = fast_overrides(mnist_root) + ["trainer.precision=bf16-mixed", "data.verify=false"]
    record = training.train(make_cfg(overrides), tmp_path / "run")
    assert record.status == "completed" and record.verdict.checks()["params_ok"] and record.test_acc is not None
    assert RunRecord.read(tmp_path / "run").precision == "bf16-mixed"  # the record says what ran
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float32}
    net = trained.trained_net(str(tmp_path / "run"))
    scored = scoring.score(net, validate(make_cfg(overrides)).data)
    assert abs(scored["accuracy"] - record.test_acc) <= 3 / scored["images"]


@pytest.mark.parametrize("accelerator, cuda, avx512_bf16, amx, threads, expected", [
    ("cpu", False, True, False, 1, "bf16-mixed"),   # the project's CPU, one thread (a search worker): 1.14-1.34x
    ("cpu", False, True, False, 2, "32-true"),      # two threads: bf16 measured 0.87-1.12x, so not taken
    ("auto", False, False, True, 1, "bf16-mixed"),  # AMX alone is native bf16 too
    ("auto", False, False, False, 1, "32-true"),    # emulated bf16: never the choice
    ("auto", True, True, False, 1, "32-true"),      # auto picks the GPU there: not measured in bf16
    ("gpu", False, True, True, 1, "32-true"),
])
def test_precision_auto_takes_bf16_only_where_it_was_measured_to_pay(monkeypatch, make_cfg, tmp_path, accelerator,
                                                                      cuda, avx512_bf16, amx, threads, expected):
    from mnist_arch.config.schema import validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    conf = validate(make_cfg(["trainer.precision=auto", f"trainer.accelerator={accelerator}"]))
    assert training.trainer_arguments(conf.trainer, tmp_path)["precision"] == expected


def test_the_record_says_where_the_time_went(make_cfg, mnist_root, tmp_path):
    """phases_s: every phase of a run, in order, none negative; together no more than the process has lived,
    and the epochs' parts no more than the epochs the history timed (BENCHMARKS.md reads these)."""
    import time

    from mnist_arch.results import provenance

    began = provenance.process_age_s()
    started = time.perf_counter()
    record = training.train(make_cfg(fast_overrides(mnist_root) + ["model=s6"]), tmp_path / "run")
    took = time.perf_counter() - started
    phases = record.phases_s
    assert list(phases) == ["start", "setup", "fit_start", "train", "val", "epoch_ends", "fit_end", "test", "record"]
    assert all(seconds >= 0 for seconds in phases.values()), phases
    assert phases["start"] >= began - 0.05  # the process's age as the run began: this test process's, here
    assert sum(phases.values()) - phases["start"] <= took + 0.05
    parts = phases["train"] + phases["val"] + phases["epoch_ends"]
    assert phases["train"] > 0 and phases["val"] > 0 and parts <= sum(record.epoch_time_s) + 0.05
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["phases_s"] == phases


def test_a_short_run_is_not_warned_about_its_logging_interval(make_cfg, mnist_root, tmp_path):
    """4 batches an epoch under the default log_every_n_steps=50: Lightning would warn at every short run about a
    setting of its own; the run logs once an epoch instead, and says nothing."""
    import warnings

    overrides = [o for o in fast_overrides(mnist_root) if not o.startswith("trainer.log_every_n_steps")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = training.train(make_cfg(overrides + ["model=s6"]), tmp_path / "run")
    assert record.status == "completed"
    assert not [w for w in caught if "logging interval" in str(w.message)]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("train/loss_step")) >= 2  # a step loss each epoch
