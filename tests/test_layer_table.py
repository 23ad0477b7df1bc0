"""The layer table: shapes, params, RF, jump and MACs by hand on a small net; analytic RF against the
empirical RF for every registered model; the CLI on the real Hydra composition."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_arch.commands import layers
from mnist_arch import summary
from mnist_arch.results import layer_table
from tests.conftest import default_budget
from mnist_arch.models import build_net, list_models


class HandNet(nn.Module):
    """Small enough to work out on paper (28 x 28 input)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)  # 4x28x28  RF 3  jump 1   params 4*9+4 = 40
        self.pool = nn.MaxPool2d(2)  # 4x14x14  RF 4  jump 2
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2)  # 8x6x6    RF 8  jump 4   params 8*4*9+8 = 296
        self.conv3 = nn.Conv2d(8, 10, 1)  # 10x6x6   RF 8  jump 4   params 10*8+10 = 90
        self.gap = nn.AdaptiveAvgPool2d(1)  # 10x1x1   RF 8 + 5*4 = 28, jump 24

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))  # functional ReLU: the next layer must still find its RF
        return self.gap(self.conv3(F.relu(self.conv2(x)))).flatten(1)


def test_hand_computed_table():
    rows = layer_table.layer_table(HandNet())
    assert [r.name for r in rows] == ["conv1", "pool", "conv2", "conv3", "gap"]
    assert [r.shape for r in rows] == [(4, 28, 28), (4, 14, 14), (8, 6, 6), (10, 6, 6), (10, 1, 1)]
    assert [r.params for r in rows] == [40, 0, 296, 90, 0]
    assert [r.rf for r in rows] == [3, 4, 8, 8, 28]
    assert [r.jump for r in rows] == [1, 2, 4, 4, 24]
    # MACs per image = output elements x (in channels x k x k)
    assert [r.macs for r in rows] == [4 * 28 * 28 * 9, 0, 8 * 6 * 6 * 4 * 9, 10 * 6 * 6 * 8, 0]
    assert [r.geometry for r in rows[:3]] == ["k3 s1 p1", "k2 s2 p0", "k3 s2 p0"]
    totals = layer_table.totals_of(rows)
    assert totals == {"macs_per_image": 28_224 + 10_368 + 2_880, "receptive_field": 28,
                      "receptive_field_layer": "gap"}


def test_empirical_rf_of_the_hand_net():
    net = HandNet()
    assert [layer_table.empirical_rf(net, name) for name in ["conv1", "pool", "conv2", "conv3"]] == [3, 4, 8, 8]
    # A global pool sees the whole input, whatever its size: there is no clear region to measure.
    assert layer_table.empirical_rf(net, "gap") is None


def test_flatten_and_linear_end_the_feature_maps():
    net = nn.Sequential(nn.Conv2d(1, 2, 5, stride=3, dilation=2), nn.Flatten(), nn.Linear(2 * 7 * 7, 10))
    rows = layer_table.layer_table(net)
    assert rows[0].geometry == "k5 s3 p0 d2" and rows[0].rf == 9 and rows[0].jump == 3
    assert rows[0].shape == (2, 7, 7)
    assert rows[1].rf is None and rows[2].rf is None and rows[2].macs == 98 * 10


@pytest.mark.parametrize("name", list_models())
def test_analytic_rf_equals_empirical_rf_for_every_layer(name):
    net = build_net({"name": name})
    rows = layer_table.layer_table(net)
    calls = [r.name for r in rows]
    # A module called more than once (s6's one dropout) is probed at its first call, so skip its others.
    # A global pool sees the whole input at any size, so it and the layers after it have no clear
    # region to measure: check the layers before it.
    spatial = next((i for i, r in enumerate(rows) if r.kind.startswith("Adaptive")), len(rows))
    checked = [r for r in rows[:spatial] if r.rf is not None and calls.count(r.name) == 1]
    assert checked, "no feature-map layer to check"
    measured = {r.name: layer_table.empirical_rf(net, r.name) for r in checked}
    assert measured == {r.name: r.rf for r in checked}


@pytest.mark.parametrize("name, rf, params", [("s4", 28, 17_120), ("s6", 43, 19_866)])
def test_reference_totals(name, rf, params):
    net = build_net({"name": name})
    table, totals, _ = layer_table.describe(net, default_budget())
    assert totals["receptive_field"] == totals["receptive_field_measured"] == rf
    assert sum(r.params for r in layer_table.layer_table(net)) == params
    assert f"total: {params:,} trainable params" in table and f"final RF {rf} (measured {rf} ✓)" in table


def test_table_is_restored_to_training_mode_and_leaves_no_hooks():
    net = build_net({"name": "s4"}).train()
    layer_table.layer_table(net)
    assert net.training and all(not m._forward_hooks for m in net.modules())
    out = net(torch.randn(4, 1, 28, 28))  # still trains normally
    assert out.shape == (4, 10)


def test_cli_prints_the_table_and_budget_checks(capsys):
    layers.main(["model=s6"])
    out = capsys.readouterr().out
    assert out.startswith("s6\nlayer")
    assert "conv7 Conv2d" in out and "final RF 43 (measured 43 ✓)" in out
    assert "params: 19,866 ≤ 20,000 ✓" in out and "FC layers: none ✓" in out


def test_cli_exits_1_when_a_rule_is_broken(capsys):
    with pytest.raises(SystemExit) as over:
        layers.main(["experiment=s4_reference", "budget.max_params=15000"])
    assert over.value.code == 1 and "params: 17,120 ≤ 15,000 ✗" in capsys.readouterr().out

    with pytest.raises(SystemExit) as fc:
        layers.main(["model=custom", "model.net._target_=tests.nets.WithLinear"])
    out = capsys.readouterr().out
    assert fc.value.code == 1 and "FC layers: head.1 ✗" in out and "head.1 Linear" in out


def test_the_old_command_name_runs_the_same(capsys):
    summary.main(["model=s6"])
    old = capsys.readouterr().out
    layers.main(["model=s6"])
    assert old == capsys.readouterr().out and "params: 19,866 ≤ 20,000 ✓" in old


def test_cli_reports_a_typo_in_one_message(capsys):
    """A bad value and a bad option: one line each, exit 2 (usage), as every command (mnist_arch/cli.py)."""
    with pytest.raises(SystemExit) as bad_value:
        layers.main(["model=s6", "data.batch_size=zero"])
    assert bad_value.value.code == 2 and capsys.readouterr().err == (
        "error: Error merging override data.batch_size=zero: Value 'zero' of type 'str' could not be converted to "
        "Integer\n")
    with pytest.raises(SystemExit) as bad_name:
        layers.main(["model=s44"])
    err = capsys.readouterr().err
    assert bad_name.value.code == 2 and err.startswith("error: model=s44 is not an option of model; did you mean "
                                                       "model=s4? (its options: ") and err.count("\n") == 1


@pytest.mark.parametrize("name", list_models())
def test_table_macs_agree_with_torchs_flop_counter(make_cfg, name):
    from dataclasses import asdict

    from mnist_arch.config.schema import validate
    from mnist_arch.models import build_net

    net = build_net(asdict(validate(make_cfg([f"model={name}"])).model))
    table, totals, _ = layer_table.describe(net, default_budget(max_params=10**6))
    assert totals["macs_per_image"] == layer_table.torch_macs(net) > 0
    assert f"(torch's FlopCounterMode: {totals['macs_per_image']:,} ✓)" in table


class MatmulHead(nn.Module):
    """A conv, then a functional matmul the table's per-module count cannot see."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 28)
        self.weight = nn.Parameter(torch.ones(4, 10))

    def forward(self, x):
        return self.conv(x).flatten(1) @ self.weight


def test_a_difference_from_torchs_count_is_explained():
    table, totals, _ = layer_table.describe(MatmulHead(), default_budget())
    assert totals["macs_per_image"] == 4 * 28 * 28 and layer_table.torch_macs(MatmulHead()) == 4 * 28 * 28 + 40
    assert "(torch's FlopCounterMode: 3,176 ✗; it also counts matrix products outside conv and linear" in table


@pytest.mark.parametrize("name, clipped", [("s6", True), ("s4", False), ("frontier_4k", False)])
def test_scores_clipped_at_zero_is_told_from_what_the_net_does(name, clipped):
    """s6's write-up ends in F.relu (no module to see): its scores are clipped at 0, and the record and the warning
    say a ReLU may be why a class is never predicted; s4 ends in a conv + BN, the convnet in a 1x1 conv."""
    from mnist_arch.models import build_net
    from mnist_arch.results.layer_table import scores_clipped_at_zero

    net = build_net({"name": name}).train()
    assert scores_clipped_at_zero(net) is clipped
    assert net.training  # its mode given back
