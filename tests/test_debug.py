"""The debug presets (conf/debug/): each composes and does what its name says, on synthetic IDX files."""
import pytest

from mnist_arch.config.schema import validate
from mnist_arch.train import job as training
from mnist_arch.train.module import Classifier
from tests.conftest import fast_overrides

TINY = ["model=custom", "model.net._target_=tests.nets.TinyConv"]


def base(root):
    """fast_overrides without its epoch and batch limits: the preset sets those."""
    return [o for o in fast_overrides(root) if not o.startswith(("trainer.max_epochs", "trainer.limit_train"))]


@pytest.fixture
def steps(monkeypatch):
    taken, real = [], Classifier.training_step

    def counted(self, batch, batch_idx):
        taken.append((self.current_epoch, batch_idx))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", counted)
    return taken


def test_fdr_runs_one_batch_and_writes_no_files(make_cfg, mnist_root, tmp_path, steps):
    record = training.train(make_cfg([*base(mnist_root), *TINY, "debug=fdr"]), tmp_path / "run")
    assert record.status == "completed" and steps == [(0, 0)]
    assert not (tmp_path / "run").exists()  # no config, checkpoints, events or summary.json


def test_overfit_learns_the_same_batches_to_nearly_100_percent(make_cfg, mnist_root, tmp_path, steps):
    cfg = make_cfg([*base(mnist_root), "model=s4", "debug=overfit"])  # TinyConv cannot: its GAP loses the band position
    record = training.train(cfg, tmp_path / "run")
    assert record.epochs_run == 30 and set(steps) == {(e, b) for e in range(30) for b in range(10)}
    assert record.train_acc[-1] >= 0.95 > record.train_acc[0]
    assert f"overfit 10 batches: train acc {record.train_acc[-1]:.2%}" in record.headline()


def test_overfit_batches_are_the_same_every_epoch(make_cfg, mnist_root, monkeypatch, tmp_path):
    seen, real = [], Classifier.training_step

    def remember(self, batch, batch_idx):
        seen.append((self.current_epoch, batch_idx, batch[1].tolist()))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", remember)
    training.train(make_cfg([*base(mnist_root), *TINY, "debug=overfit", "trainer.max_epochs=2"]), tmp_path / "run")
    first = [labels for epoch, _, labels in seen if epoch == 0]
    assert first == [labels for epoch, _, labels in seen if epoch == 1] and len(first) == 10


def test_profiler_writes_its_report_into_the_run_dir(make_cfg, mnist_root, tmp_path):
    training.train(make_cfg([*base(mnist_root), *TINY, "debug=profiler"]), tmp_path / "run")
    report = (tmp_path / "run" / "fit-profile.txt").read_text()
    assert "run_training_batch" in report or "training_step" in report


def test_limit_runs_three_short_epochs(make_cfg, mnist_root, tmp_path, steps):
    record = training.train(make_cfg([*base(mnist_root), *TINY, "debug=limit"]), tmp_path / "run")
    # the synthetic train split has 10 batches of 32: all of them, each of 3 epochs
    assert record.epochs_run == 3 and len(steps) == 30 and (tmp_path / "run" / "summary.json").is_file()


def test_default_is_a_careful_cpu_epoch(make_cfg, mnist_root, tmp_path):
    conf = validate(make_cfg([*base(mnist_root), *TINY, "debug=default"]))
    kwargs = training.trainer_arguments(conf.trainer, tmp_path)
    assert (kwargs["accelerator"], kwargs["deterministic"], kwargs["detect_anomaly"], kwargs["max_epochs"]) == \
        ("cpu", True, True, 1)
    record = training.train(make_cfg([*base(mnist_root), *TINY, "debug=default"]), tmp_path / "run")
    assert record.status == "completed" and record.epochs_run == 1


def test_lr_find_suggests_an_override_and_draws_the_curve(make_cfg, mnist_root, tmp_path):
    import json

    from mnist_arch.commands import lr_find

    cfg = make_cfg([*base(mnist_root), "model=s6", "trainer.max_epochs=20"])
    suggestion = lr_find.find(cfg, tmp_path / "run")
    found = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert lr_find.MIN_LR <= suggestion <= lr_find.MAX_LR and found["suggestion"] == suggestion
    assert len(found["lr"]) == len(found["loss"]) > 10 and found["lr"] == sorted(found["lr"])
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 10_000
