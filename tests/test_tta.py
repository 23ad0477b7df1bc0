"""Test-time augmentation as a declared column (issue 46): tta=shifts scores val (each epoch) and test on the image
and its four one-pixel shifts, averaged, beside the plain scores it never replaces."""
import pytest
import torch
import torch.nn.functional as F

from mnist_arch.errors import ConfigError
from mnist_arch.results import leaderboard
from mnist_arch.results.record import RunRecord
from mnist_arch.train import job as training
from mnist_arch.data.device_loader import TTA_SHIFTS
from mnist_arch.train.module import Classifier
from tests.conftest import fast_overrides


def test_the_tta_probabilities_are_the_mean_over_the_image_and_its_four_shifts():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    module = Classifier(net, {}, {}, tta="shifts")
    x = torch.randn(3, 1, 28, 28)
    by_hand = sum(F.softmax(net(torch.roll(x, s, dims=(2, 3))), dim=1) for s in TTA_SHIFTS) / 5
    assert len(TTA_SHIFTS) == 5 and torch.allclose(module.tta_probabilities(x), by_hand, atol=1e-6)


def test_a_run_with_tta_records_it_beside_the_plain_scores(make_cfg, mnist_root, tmp_path):
    plain = training.train(make_cfg(fast_overrides(mnist_root)), tmp_path / "plain")
    record = training.train(make_cfg(fast_overrides(mnist_root) + ["tta=shifts"]), tmp_path / "tta")
    assert len(record.val_acc_tta) == record.epochs_run == 2 and record.test_acc_tta is not None
    assert record.val_acc == plain.val_acc and record.test_acc == plain.test_acc  # the plain scores are untouched
    assert plain.val_acc_tta == [] and plain.test_acc_tta is None
    assert f"with TTA {record.test_acc_tta:.2%}" in RunRecord.read(tmp_path / "tta").headline()
    board = leaderboard.markdown(*leaderboard.leaderboard(leaderboard.read_records(tmp_path))[:2], [])
    assert "final-epoch test-set acc, TTA" in board and "test acc, TTA" in board


def test_an_unknown_tta_is_one_line(make_cfg):
    from mnist_arch.config.schema import validate

    with pytest.raises(ConfigError, match="tta='flips' is not one of: none, shifts"):
        validate(make_cfg(["tta=flips"]))


def test_evaluate_scores_tta_as_the_run_did(make_cfg, mnist_root, tmp_path, capsys):
    """`evaluate --tta shifts` (a run trained without it, scored on its holdout afterwards) gives the run's own
    tta=shifts test score for the same weights, beside the plain one."""
    from mnist_arch.commands import evaluate

    overrides = fast_overrides(mnist_root) + ["tta=shifts", "data.verify=false"]
    record = training.train(make_cfg(overrides), tmp_path / "tta")
    evaluate.main([str(tmp_path / "tta"), f"data.root={mnist_root}", "data.download=false", "data.verify=false",
                   "--tta", "shifts"])
    import json

    result = json.loads((tmp_path / "tta" / "evaluate.json").read_text())
    assert result["accuracy"] == pytest.approx(record.test_acc, abs=1e-6)
    assert result["accuracy_tta"] == pytest.approx(record.test_acc_tta, abs=1e-6)
    assert f"with TTA (shifts) {result['accuracy_tta']:.2%}" in capsys.readouterr().out
