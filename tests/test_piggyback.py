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
@pytest.mark.parametrize("coef_scale, mix_free", [(1.0, False), (7.0, False), (7.0, True)])
def test_bank_path_equals_dense_path_and_materialized(kind, coef_scale, mix_free):
    base = make(kind)
    filters = base.weight.detach().transpose(0, 1) if kind == "convT" else base.weight.detach()
    bank = torch.randn(11, *filters.shape[1:])
    wrapped = (PiggybackConv2d if kind == "conv" else PiggybackConvTranspose2d)(base, bank, 0.25,
                                                                              coef_scale=coef_scale, mix_free=mix_free)
    assert wrapped.free_count == math.ceil(0.25 * 8) and wrapped.coef.shape == (11 + 2 * mix_free, 6)
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


def test_fresh_free_filters_are_new_directions_at_the_layer_scale():
    base = make("conv", c_out=16)
    bank = base.weight.detach().clone()
    copied = PiggybackConv2d(base, bank, 0.25)
    fresh = PiggybackConv2d(base, bank, 0.25, free_init="fresh")
    torch.testing.assert_close(copied.free, bank[:4])
    assert not torch.allclose(fresh.free, bank[:4])
    assert 0.5 < float(fresh.free.detach().std() / bank.std()) < 2.0
    torch.testing.assert_close(fresh.filters()[4:], bank[4:], atol=1e-5, rtol=1e-4)  # piggyback part unchanged


def test_mixing_free_filters_starts_from_the_same_filters_and_trains_through_them():
    base = make("conv", c_out=16)
    bank = base.weight.detach().clone()
    plain = PiggybackConv2d(base, bank, 0.25, coef_scale=30.0)
    mixed = PiggybackConv2d(base, bank, 0.25, coef_scale=30.0, mix_free=True)
    assert mixed.coef.shape == (16 + 4, 12)
    torch.testing.assert_close(mixed.filters(), plain.filters())
    with torch.no_grad():
        mixed.coef[16:].normal_()
    mixed(torch.randn(2, 6, 8, 8)).square().mean().backward()
    # the free filters get gradient from their own outputs and from the piggyback filters they shape
    assert mixed.free.grad is not None and mixed.coef.grad[16:].abs().sum() > 0
    assert sum(p.numel() for p in mixed.parameters()) == sum(p.numel() for p in plain.parameters()) + 4 * 12


def test_small_free_allocation_keeps_the_uniform_budget():
    from pbgan_plugins.piggyback import free_shares, layer_cost

    # (filters, weights per filter, bank filters): two small outer layers, two large inner ones
    sizes = {"first": (16, 48, 16), "inner1": (128, 2048, 128), "inner2": (64, 4096, 64), "last": (3, 512, 3)}

    def stored(shares):
        return sum(math.ceil(shares[p] * c) * d + n * (c - math.ceil(shares[p] * c))
                   for p, (c, d, n) in sizes.items())

    uniform = stored(dict.fromkeys(sizes, 0.25))
    assert uniform == sum(layer_cost(size, 0.25) for size in sizes.values())
    shares = free_shares(sizes, uniform)
    assert shares["first"] == shares["last"] == 1.0
    assert 0 < shares["inner1"] == shares["inner2"] < 0.25
    assert stored(shares) <= uniform
    assert stored({**shares, "inner1": shares["inner1"] + 0.02, "inner2": shares["inner2"] + 0.02}) > \
        uniform  # the largest share that fits


def test_small_free_frees_a_layer_whose_bank_outgrew_its_filters():
    from pbgan_plugins.piggyback import free_shares

    # a first layer of 64 filters of 48 weights: its bank (64 filters) spans every filter already
    sizes = {"first": (64, 48, 64), "inner": (512, 4096, 512), "more": (512, 4096, 512)}
    assert free_shares(sizes, 10**6)["first"] == 1.0


@pytest.mark.parametrize("budget", [0.3, 0.5])
@pytest.mark.parametrize("net", ["auto", "resnet_6blocks"])
def test_budget_bounds_a_later_tasks_stored_parameters(budget, net):
    from pbgan_plugins.networks import build_generator

    def generator():
        torch.manual_seed(0)
        return build_generator(net, 3, 3, ngf=8, size=32)

    first = PiggybackFactorizer().wrap(generator(), {}, {})
    _, bank = PiggybackFactorizer().split(first)
    for tasks in ((1, 3) if net == "auto" else (1, 2)):  # the budget holds as the bank grows
        grown = {k: torch.cat([v] * tasks) for k, v in bank.items()}
        later = PiggybackFactorizer().wrap(generator(), grown, {"allocation": "small-free", "budget": budget})
        standalone = sum(p.numel() for p in generator().parameters())
        stored = PiggybackFactorizer().stored_parameters(later)
        assert budget - 0.03 < stored / standalone <= budget  # as close as whole filters allow


def test_budget_too_small_for_the_generator_is_one_line():
    from pbgan_plugins.networks import build_generator

    plain = build_generator("auto", 3, 3, ngf=8, size=32)
    _, bank = PiggybackFactorizer().split(PiggybackFactorizer().wrap(plain, {}, {}))
    with pytest.raises(PbganError, match="--budget 0.01 is below"):
        PiggybackFactorizer().wrap(build_generator("auto", 3, 3, ngf=8, size=32), bank,
                                   {"allocation": "small-free", "budget": 0.01})
