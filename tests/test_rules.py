"""The rules in one place: `judge` on numbers and on nets; every check can fail for its own reason."""
import pytest

from mnist_arch.rules import judge, judge_net
from tests.conftest import default_budget
from tests.nets import TinyConv, WithLinear, WrongOutput

BUDGET = default_budget(max_params=1_000, max_epochs=3, target_acc=0.9, allow_fc=False)


def test_a_net_within_every_rule():
    verdict = judge(BUDGET, params=900, fc=[], output_shape=(2, 10), val_acc=[0.5, 0.91])
    assert verdict.failure() is None and verdict.target_epoch == 2
    assert verdict.checks() == {"params_ok": True, "no_fc_ok": True, "output_ok": True, "epochs_ok": True,
                                "target_ok": True}


@pytest.mark.parametrize("change, failed, status", [
    ({"params": 1_001}, "params_ok", "over_budget"),
    ({"fc": ["head"]}, "no_fc_ok", "fc_not_allowed"),
    ({"output_shape": (2, 7)}, "output_ok", "bad_output"),
    ({"val_acc": [0.91, 0.6, 0.7, 0.8]}, "epochs_ok", None),  # a resumed run that went past the budget
    ({"val_acc": [0.5, 0.6, 0.89999]}, "target_ok", None),
])
def test_each_rule_fails_on_its_own(change, failed, status):
    given = {"params": 900, "fc": [], "output_shape": (2, 10), "val_acc": [0.5, 0.91], **change}
    checks = judge(BUDGET, **given).checks()
    assert [name for name, ok in checks.items() if not ok] == [failed]
    broken = judge(BUDGET, **given).failure()
    assert (broken[0] if broken else None) == status


def test_a_target_first_reached_after_the_epoch_budget_does_not_count():
    assert judge(BUDGET, 900, [], val_acc=[0.5, 0.6, 0.7, 0.95]).target_epoch is None


def test_not_judged_yet_is_none_not_a_pass():
    checks = judge(BUDGET, params=900, fc=[]).checks()
    assert checks["output_ok"] is None and checks["epochs_ok"] is None and checks["target_ok"] is None


def test_judge_net_probes_params_fc_and_output():
    tiny = judge_net(TinyConv(width=6), BUDGET)
    assert (tiny.params, tiny.fc, tiny.output_shape) == (6 * 9 + 6 + 6 * 10 + 10, [], (2, 10))
    assert judge_net(WithLinear(), default_budget(max_params=10_000)).failure()[0] == "fc_not_allowed"
    assert judge_net(WrongOutput(), default_budget()).failure()[1].endswith("it gave (2, 7) for N=2")


def test_one_rendering_for_the_table_and_the_headline():
    verdict = judge(default_budget(), params=17_120, fc=[], output_shape=(2, 10), val_acc=[0.99, 0.9942])
    assert verdict.lines() == ["params: 17,120 ≤ 20,000 ✓ (budget.max_params)",
                               "FC layers: none ✓ (budget.allow_fc=false)",
                               "output for 2 images: (2, 10) ✓ (must be (2, 10))"]
    assert verdict.headline() == ("17,120 params ✓ ≤20,000 · no FC ✓ · 99.42% at epoch 2 ✓ (target 99.40%, "
                                  "≤20 epochs, 2 run")
    missed = judge(default_budget(), params=17_120, fc=["fc1"], val_acc=[0.99, 0.993])
    assert missed.headline().startswith("17,120 params ✓ ≤20,000 · no FC ✗ · best 99.30% at epoch 2 ✗")


def test_the_epoch_budget_is_refused_in_the_config_too():
    from mnist_arch.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.max_epochs=4 is over budget.max_epochs=3"):
        BUDGET.check_epochs(4)
