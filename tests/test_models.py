"""Registry-wide checks: every registered architecture is tested the moment it is registered."""
import pytest
import torch

from mnist_arch.errors import ConfigError
from mnist_arch.models import build_net, list_models
from tests.conftest import every_model

REFERENCE_PARAMS = {"s4": 17_120, "s6": 19_866}  # the write-ups' torchsummary totals
FRONTIER = {"frontier_4k": (3_670, 4_000), "frontier_8k": (7_516, 8_000), "frontier_20k": (18_482, 20_000)}


def test_registry_lists_the_references():
    assert set(REFERENCE_PARAMS) <= set(list_models())


def test_unknown_name_lists_what_exists():
    with pytest.raises(ConfigError, match=f"unknown model 'nope'; available: {every_model()}$"):
        build_net({"name": "nope"})


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_count(name):
    net = build_net({"name": name})
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", list_models())
def test_forward_gives_finite_logits_with_no_softmax_inside(name):
    """One log_softmax per step, in the loss: a net that normalised its own output would give rows whose
    exp sums to 1 for any input."""
    torch.manual_seed(0)
    net = build_net({"name": name}).eval()
    out = net(torch.randn(5, 1, 28, 28) * 3)
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out.exp().sum(dim=1), torch.ones(5), atol=1e-3)


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    net = build_net({"name": name}).train()
    loss = torch.nn.functional.cross_entropy(net(torch.randn(8, 1, 28, 28)), torch.arange(8) % 10)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_s4_layer_order_is_conv_relu_bn_dropout():
    block = build_net({"name": "s4"}).conv1
    assert [type(m).__name__ for m in block] == ["Conv2d", "ReLU", "BatchNorm2d", "Dropout"]
    net = build_net({"name": "s4"})
    assert [net.conv3[3].p, net.conv7[3].p, net.conv8[3].p] == [0.0, 0.0, 0.0]
    assert [net.conv1[3].p, net.conv4[3].p] == [0.15, 0.15]


def test_s6_uses_dropout2d_and_ends_in_relu():
    torch.manual_seed(0)
    net = build_net({"name": "s6"}).eval()
    assert isinstance(net.drop, torch.nn.Dropout2d) and net.drop.p == 0.25
    seen = {}
    net.conv7.register_forward_hook(lambda module, inputs, output: seen.update(conv7=output))
    out = net(torch.randn(16, 1, 28, 28))
    logits = seen["conv7"].flatten(1)
    assert (logits < 0).any()  # so the ReLU after the last conv is visible in the output
    assert torch.allclose(out, torch.relu(logits), atol=1e-6)


PUBLIC = {"public_3762": 3_762, "public_7918": 7_918, "public_9994": 9_994}  # their published totals


def _preset_net(make_cfg, preset):
    from dataclasses import asdict

    from mnist_arch.config.schema import validate
    from mnist_arch.models import build_net

    return build_net(asdict(validate(make_cfg([f"model={preset}"])).model))


@pytest.mark.parametrize("preset", sorted(PUBLIC))
def test_public_presets_have_their_published_parameter_counts(make_cfg, preset):
    net = _preset_net(make_cfg, preset)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == PUBLIC[preset]
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("preset", sorted(FRONTIER))
def test_frontier_presets_fit_their_budgets_without_fc(make_cfg, preset):
    net = _preset_net(make_cfg, preset)
    params, budget = FRONTIER[preset]
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == params <= budget
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("overrides, message", [
    (["model.net.stages=[[4,4],[8,0]]"], r"model.net.stages\[1\]\[1\]=0: a conv needs a width of at least 1"),
    (["model.net.stages=[[8],[8],[8],[8],[8],[8]]"], r"model.net.stages\[5\]: the max-pool before it shrinks the "
                                                     r"map below 1x1"),
    (["model.net.stages=[[8,8,8,8,8,8,8],[8,8,8,8]]", "model.net.padding=valid"],
     r"model.net.stages\[1\]: its conv 4 \(valid padding\) shrinks the map below 1x1"),
    (["model.net.padding=[same,valid]"], r"model.net.padding has 2 entries for 3 stages"),
    (["model.net.order=relu_relu"], r"model.net.order='relu_relu' must be bn_relu or relu_bn"),
])
def test_convnet_refuses_shapes_that_cannot_work_naming_the_stage(make_cfg, overrides, message):
    from dataclasses import asdict

    from mnist_arch.config.schema import ConfigError, validate
    from mnist_arch.models import build_net

    with pytest.raises(ConfigError, match=message):
        build_net(asdict(validate(make_cfg(["model=convnet", *overrides])).model))


def test_convnet_options_build_what_they_say():
    from mnist_arch.models.convnet import ConvNet

    relu_first = ConvNet([[4], [6]], order="relu_bn", head="conv_gap", dropout=0.1, transitions=[[3], []])
    kinds = [type(m).__name__ for m in relu_first.features.modules() if not list(m.children())]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d", "Dropout",
                     "Conv2d", "ReLU", "BatchNorm2d"]
    assert relu_first.features[1][0].kernel_size == (1, 1) and not relu_first.gap_first
    valid = ConvNet([[4, 4]], padding="valid", bias=True, class_bias=False)
    assert valid.features[0][0].padding == (0, 0) and valid.features[0][0].bias is not None
    assert valid.classes.bias is None
    seen = {}
    valid.features.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    valid(torch.zeros(1, 1, 28, 28))
    assert seen["shape"] == (1, 4, 24, 24)


def test_separable_convs_cost_9c_plus_c_squared_and_the_layer_table_counts_them():
    """conv=separable: a 3x3 depthwise conv then a 1x1 pointwise one, then BN and ReLU; the net's first conv
    (one input channel) stays full; the table's params and MACs agree with torch's FlopCounterMode."""
    from mnist_arch.models.convnet import ConvNet
    from mnist_arch.results.layer_table import layer_table, torch_macs, totals_of

    net = ConvNet([[8], [16, 16]], conv="separable")
    first, second = net.features[0], net.features[2]
    assert [type(m).__name__ for m in first] == ["Conv2d", "BatchNorm2d", "ReLU"]  # the 1-channel input: full
    assert [type(m).__name__ for m in second] == ["Conv2d", "Conv2d", "BatchNorm2d", "ReLU"]
    depthwise, pointwise = second[0], second[1]
    assert (depthwise.groups, depthwise.kernel_size, pointwise.kernel_size) == (8, (3, 3), (1, 1))
    assert sum(p.numel() for p in second.parameters()) == 9 * 8 + 8 * 16 + 2 * 16  # + BN's scale and shift
    full = ConvNet([[8], [16, 16]])
    per_layer = lambda n: sum(p.numel() for p in n.features[2:].parameters() if p.ndim == 4)  # noqa: E731
    assert per_layer(net) == (9 * 8 + 8 * 16) + (9 * 16 + 16 * 16) and per_layer(full) == 9 * 8 * 16 + 9 * 16 * 16
    rows = layer_table(net)
    assert totals_of(rows)["macs_per_image"] == torch_macs(net)
    assert [r.geometry for r in rows if r.name == "features.2.0"] == ["k3 s1 p1 dw"]
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    mixed = ConvNet([[8], [16], [16]], conv=["full", "separable", "full"])
    assert [len(mixed.features[i]) for i in (0, 2, 4)] == [3, 4, 3]
    with pytest.raises(ValueError, match=r"model.net.conv='depthwise': full or separable, once or once per stage"):
        ConvNet([[8]], conv="depthwise")


def test_a_search_space_samples_separable_convs_per_stage():
    import optuna

    from mnist_arch.search import space

    spec = {"convnet": {"stages": 2, "convs": 1, "width": 8, "conv": {"choices": ["full", "separable"]}}}
    study = optuna.create_study()
    study.enqueue_trial({"conv_1": "full", "conv_2": "separable"})
    overrides = space.sample(study.ask(), spec)
    assert "model.net.conv=[full,separable]" in overrides
    study.enqueue_trial({"conv_1": "full", "conv_2": "full"})
    assert "model.net.conv=full" in space.sample(study.ask(), spec)
