"""The rules of the game on tiny nets and synthetic data: each refusal before any step, stop at target,
the verdict in summary.json, and the logits-vs-log-probabilities contract."""
import json

import pytest
import torch

from mnist_arch.commands import run
from mnist_arch.errors import BudgetError
from mnist_arch.train.history import History
from mnist_arch.rules import fc_layers, largest_layers
from mnist_arch.train import job as training
from mnist_arch.train.module import Classifier
from tests.conftest import fast_overrides, hydra_command
from tests.nets import TinyConv, WithLinear

CUSTOM = ["model=custom", "model.net._target_=tests.nets.TinyConv"]


@pytest.fixture
def steps(monkeypatch):
    """Counts training steps actually taken."""
    taken = []
    real = Classifier.training_step

    def counted(self, batch, batch_idx):
        taken.append(batch_idx)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", counted)
    return taken


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_within_budget_trains_and_reports_the_verdict(make_cfg, mnist_root, tmp_path, steps):
    # a target any net reaches at epoch 1, and stopping at it off, so both epochs run
    overrides = fast_overrides(mnist_root) + CUSTOM + ["+model.net.width=6", "budget.target_acc=0.0001",
                                                       "callbacks.stop_at_target=false"]
    summary = training.train(make_cfg(overrides), tmp_path / "r")
    assert summary.status == "completed" and len(steps) == 8  # 2 epochs x 4 batches
    assert summary.params == 6 * 9 + 6 + 6 * 10 + 10
    assert summary.verdict.checks() == {"params_ok": True, "epochs_ok": True, "no_fc_ok": True, "output_ok": True,
                                        "target_ok": True}
    assert summary.target_epoch == 1 and _summary(tmp_path / "r")["verdict"] == summary.verdict.checks()


def test_over_budget_stops_before_any_step(make_cfg, mnist_root, tmp_path, steps):
    with pytest.raises(BudgetError) as err:
        training.train(make_cfg(fast_overrides(mnist_root) + ["budget.max_params=10000"]), tmp_path / "r")
    assert str(err.value).startswith("17,120 > 10,000 trainable parameters")
    assert "largest layers: conv8.0 4,344, conv7.0 2,900, conv3.0 2,540" in str(err.value)
    assert steps == []
    on_disk = _summary(tmp_path / "r")
    assert on_disk["status"] == "over_budget" and on_disk["verdict"]["params_ok"] is False


def test_fc_layer_in_a_user_net_is_refused_by_name(make_cfg, mnist_root, tmp_path, steps):
    overrides = fast_overrides(mnist_root) + ["model=custom", "model.net._target_=tests.nets.WithLinear"]
    with pytest.raises(BudgetError, match=r"fully connected layer\(s\) not allowed: head.1"):
        training.train(make_cfg(overrides), tmp_path / "r")
    assert steps == [] and _summary(tmp_path / "r")["status"] == "fc_not_allowed"
    allowed = training.train(make_cfg(overrides + ["budget.allow_fc=true"]), tmp_path / "allowed")
    assert allowed.status == "completed" and allowed.verdict.no_fc_ok is True


def test_fc_detection_and_largest_layers():
    assert fc_layers(WithLinear()) == ["head.1"] and fc_layers(TinyConv()) == []
    assert fc_layers(torch.nn.Bilinear(2, 2, 2)) == ["(the net itself)"]
    assert largest_layers(WithLinear(), k=1) == [("head.1", 4 * 7 * 7 * 10 + 10)]


def test_a_net_with_the_wrong_output_shape_is_refused(make_cfg, mnist_root, tmp_path, steps):
    overrides = fast_overrides(mnist_root) + ["model=custom", "model.net._target_=tests.nets.WrongOutput"]
    with pytest.raises(BudgetError, match=r"must map \(N, 1, 28, 28\) to \(N, 10\); it gave \(2, 7\)"):
        training.train(make_cfg(overrides), tmp_path / "r")
    assert steps == []


def test_stop_at_the_first_epoch_reaching_the_target(make_cfg, mnist_root, tmp_path):
    # A low target that the synthetic data reaches early; 5 epochs allowed.
    overrides = fast_overrides(mnist_root) + CUSTOM + ["trainer.max_epochs=5", "budget.target_acc=0.05"]
    summary = training.train(make_cfg(overrides), tmp_path / "r")
    assert summary.target_epoch == 1 and summary.epochs_run == 1 and summary.target_reached
    unstopped = training.train(make_cfg(overrides + ["callbacks.stop_at_target=false"]), tmp_path / "u")
    assert unstopped.epochs_run == 5 and unstopped.target_epoch == 1


def test_stop_is_inclusive_at_the_target(make_cfg, mnist_root, tmp_path):
    first = training.train(make_cfg(fast_overrides(mnist_root) + CUSTOM + ["callbacks.stop_at_target=false"]),
                      tmp_path / "a")
    exact = first.val_acc[0]  # the same seed reaches exactly this after epoch 1
    again = training.train(make_cfg(fast_overrides(mnist_root) + CUSTOM + [f"budget.target_acc={exact}"]), tmp_path / "b")
    assert again.val_acc[0] == exact and again.target_epoch == 1 and again.epochs_run == 1


def test_logits_and_log_probabilities_train_identically():
    """The contract: a net returns logits or log-probabilities; the loss's one log_softmax makes the two the
    same loss and the same gradients (log_softmax(log_softmax(z)) == log_softmax(z))."""
    torch.manual_seed(0)
    logits_net = TinyConv()
    log_prob_net = torch.nn.Sequential(TinyConv(), torch.nn.LogSoftmax(dim=-1))
    log_prob_net[0].load_state_dict(logits_net.state_dict())
    opt = {"_target_": "torch.optim.SGD", "name": "sgd", "lr": 0.1, "weight_decay": 0.0, "decay_norm_and_bias": False}
    constant = {"_target_": None, "name": "none", "interval": "epoch"}
    a, b = Classifier(logits_net, opt, constant), Classifier(log_prob_net, opt, constant)
    batch = (torch.randn(16, 1, 28, 28), torch.arange(16) % 10)
    loss_a, _ = a._step(batch, a.val_loss, a.val_acc)
    loss_b, _ = b._step(batch, b.val_loss, b.val_acc)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
    loss_a.backward()
    loss_b.backward()
    for pa, pb in zip(logits_net.parameters(), log_prob_net[0].parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_a_bad_target_path_is_one_clear_error(make_cfg, mnist_root, tmp_path):
    from mnist_arch.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"model.net._target_=tests.nets.Nope could not be built"):
        training.train(make_cfg(fast_overrides(mnist_root) + ["model=custom", "model.net._target_=tests.nets.Nope"]),
                  tmp_path / "r")


def test_cli_over_budget_exits_non_zero_with_one_line(mnist_root, tmp_path, monkeypatch, capsys):
    code = hydra_command(run.main, [*fast_overrides(mnist_root), "budget.max_params=5000", f"hydra.run.dir={tmp_path}"],
                         monkeypatch)
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: 17,120 > 5,000 trainable parameters")
    assert "\n" not in err
    assert _summary(tmp_path)["status"] == "over_budget"


def test_epoch_train_loss_and_acc_are_the_image_weighted_means_of_its_batches():
    """The running sums behind train/loss and train/acc: with lr 0 the net does not move, so the epoch's
    numbers must equal one pass over the same batches (of unequal sizes) computed here."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    net = TinyConv()
    opt = {"_target_": "torch.optim.SGD", "name": "sgd", "lr": 0.0, "weight_decay": 0.0, "decay_norm_and_bias": False}
    module = Classifier(net, opt, {"_target_": None, "name": "none", "interval": "epoch"})
    history = History()
    x, y = torch.randn(23, 1, 28, 28), torch.randint(0, 10, (23,))
    loader = DataLoader(TensorDataset(x, y), batch_size=10)  # batches of 10, 10 and 3 images
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[history],
               enable_model_summary=False, limit_val_batches=0).fit(module, loader)
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(net(xb), yb, reduction="sum") for xb, yb in loader]
        correct = (net(x).argmax(1) == y).sum().item()
    assert history["train_loss"] == [pytest.approx(sum(losses).item() / 23, rel=1e-5)]
    assert history["train_acc"] == [pytest.approx(correct / 23)]
