"""PiggybackConv2d / PiggybackConvTranspose2d: exact equivalence of every path."""
import math

import pytest
import torch
from torch import nn

from pbgan_core.errors import PbganError
from pbgan_plugins.piggyback import PiggybackConv2d, PiggybackConvTranspose2d, PiggybackFactorizer

torch.manual_seed(0)


def make(kind, c_in=6, c_out=8, **kw):
    return (nn.Conv2d if kind == "conv" else nn.ConvTranspose2d)(c_in, c_out, 4, stride=2, padding=1, **kw)


@pytest.mark.parametrize("kind", ["conv", "convT"])
def test_first_task_wrapper_is_the_plain_layer(kind):
    base = make(kind)
    x = torch.randn(2, 6, 8, 8)
    expected = base(x)
    wrapped = (PiggybackConv2d if kind == "conv" else PiggybackConvTranspose2d)(base, None, 0.25)
    assert wrapped.coef is None and wrapped.free_count == 8
    torch.testing.assert_close(wrapped(x), expected)


@pytest.mark.parametrize("kind", ["conv", "convT"])
@pytest.mark.parametrize("coef_scale", [1.0, 7.0])
def test_bank_path_equals_dense_path_and_materialized(kind, coef_scale):
    base = make(kind)
    filters = base.weight.detach().transpose(0, 1) if kind == "convT" else base.weight.detach()
    bank = torch.randn(11, *filters.shape[1:])
    wrapped = (PiggybackConv2d if kind == "conv" else PiggybackConvTranspose2d)(base, bank, 0.25,
                                                                              coef_scale=coef_scale)
    assert wrapped.free_count == math.ceil(0.25 * 8) and wrapped.coef.shape == (11, 6)
    with torch.no_grad():
        wrapped.coef.normal_()
    x = torch.randn(3, 6, 8, 8)
    wrapped._bank_path_is_cheaper = lambda x: True
    via_bank = wrapped(x)
    wrapped._bank_path_is_cheaper = lambda x: False
    via_dense = wrapped(x)
    dense = wrapped.dense()
    assert type(dense) is type(base)
    rel = (via_bank - via_dense).abs().max() / via_dense.abs().max()
    assert rel < 1e-5
    rel = (dense(x) - via_dense).abs().max() / via_dense.abs().max()
    assert rel < 1e-5


def test_gradients_flow_to_free_coef_and_bias_not_bank():
    base = make("conv")
    bank = torch.randn(8, 6, 4, 4)
    wrapped = PiggybackConv2d(base, bank, 0.25)
    wrapped(torch.randn(2, 6, 8, 8)).square().mean().backward()
    assert wrapped.free.grad is not None and wrapped.coef.grad is not None and wrapped.bias.grad is not None
    assert "bank" not in dict(wrapped.named_parameters()) and "bank" not in wrapped.state_dict()


@pytest.mark.parametrize("coef_scale", [1.0, 10.0])
def test_warm_start_coefficients_reproduce_bank_filters(coef_scale):
    base = make("conv")
    bank = base.weight.detach().clone()  # the bank holds exactly this layer's filters
    wrapped = PiggybackConv2d(base, bank, 0.25, coef_scale=coef_scale)
    torch.testing.assert_close(wrapped.filters(), bank, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(wrapped.coef * coef_scale, wrapped.coefficients())


def test_grouped_convolution_is_refused():
    with pytest.raises(PbganError, match="groups=1"):
        PiggybackConv2d(nn.Conv2d(4, 4, 3, groups=2), None, 0.25)


def test_factorizer_wraps_in_place_and_keeps_the_forward():
    class Net(nn.Module):  # a residual block: a flattened Sequential would lose the addition
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1, padding_mode="reflect"))

        def forward(self, x):
            return x + self.b(self.a(x))

    net = Net()
    x = torch.randn(1, 3, 8, 8)
    expected = net(x)
    fac = PiggybackFactorizer()
    fac.wrap(net, {}, {"lambda": 0.25})
    assert isinstance(net.a, PiggybackConv2d) and isinstance(net.b[1], PiggybackConv2d)
    torch.testing.assert_close(net(x), expected)
    kept, added = fac.split(net)
    assert set(added) == {"a", "b.1"} and "a.free" not in kept and "a.bias" in kept
    fac.materialize(net)
    assert type(net.a) is nn.Conv2d and type(net.b[1]) is nn.Conv2d
    torch.testing.assert_close(net(x), expected)


def test_parameter_count_matches_the_formula():
    conv = nn.Conv2d(16, 32, 3)
    bank = torch.randn(40, 16, 3, 3)
    wrapped = PiggybackConv2d(conv, bank, 0.25)
    u = math.ceil(0.25 * 32)
    expected = u * 16 * 9 + 40 * (32 - u) + 32  # free filters + coefficients + bias
    assert sum(p.numel() for p in wrapped.parameters()) == expected
