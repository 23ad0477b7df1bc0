"""Registry-wide checks: every registered architecture is tested the moment it is registered."""
import pytest
import torch

from mnist_arch.models import build_model, list_models

REFERENCE_PARAMS = {"s4": 17_120, "s6": 19_866}  # the write-ups' torchsummary totals
FRONTIER = {"frontier_4k": (3_902, 4_000), "frontier_8k": (7_890, 8_000), "frontier_20k": (19_958, 20_000)}


def test_registry_lists_the_references():
    assert set(REFERENCE_PARAMS) <= set(list_models())


def test_unknown_name_lists_what_exists():
    with pytest.raises(KeyError, match="unknown model 'nope'; available: frontier_20k, frontier_4k, frontier_8k, s4, s6"):
        build_model("nope")


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_parameter_count(name):
    net = build_model(name)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", list_models())
def test_forward_gives_finite_logits_with_no_softmax_inside(name):
    """One log_softmax per step, in the loss: a net that normalised its own output would give rows whose
    exp sums to 1 for any input."""
    torch.manual_seed(0)
    net = build_model(name).eval()
    out = net(torch.randn(5, 1, 28, 28) * 3)
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out.exp().sum(dim=1), torch.ones(5), atol=1e-3)


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    net = build_model(name).train()
    loss = torch.nn.functional.cross_entropy(net(torch.randn(8, 1, 28, 28)), torch.arange(8) % 10)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_s4_layer_order_is_conv_relu_bn_dropout():
    block = build_model("s4").conv1
    assert [type(m).__name__ for m in block] == ["Conv2d", "ReLU", "BatchNorm2d", "Dropout"]
    net = build_model("s4")
    assert [net.conv3[3].p, net.conv7[3].p, net.conv8[3].p] == [0.0, 0.0, 0.0]
    assert [net.conv1[3].p, net.conv4[3].p] == [0.15, 0.15]


def test_s6_uses_dropout2d_and_ends_in_relu():
    torch.manual_seed(0)
    net = build_model("s6").eval()
    assert isinstance(net.drop, torch.nn.Dropout2d) and net.drop.p == 0.25
    seen = {}
    net.conv7.register_forward_hook(lambda module, inputs, output: seen.update(conv7=output))
    out = net(torch.randn(16, 1, 28, 28))
    logits = seen["conv7"].flatten(1)
    assert (logits < 0).any()  # so the ReLU after the last conv is visible in the output
    assert torch.allclose(out, torch.relu(logits), atol=1e-6)


@pytest.mark.parametrize("name", sorted(FRONTIER))
def test_frontier_models_fit_their_budgets_without_fc(name):
    net = build_model(name)
    params, budget = FRONTIER[name]
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == params <= budget
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())
