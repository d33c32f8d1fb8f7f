import math

import numpy as np
import pytest
import torch

from pbgan_core.errors import PbganError
from pbgan_core.interfaces import Metric
from pbgan_plugins import metrics as M
from pbgan_plugins.fid import FIDInceptionV3, FIDMetric, frechet_distance, load_fid_inception
from pbgan_plugins.lpips import LPIPS, build_lpips, combine_lpips_weights, load_lpips

FID_MSG = "fid needs Inception weights: pass --fid-weights PATH or set PBGAN_FID_WEIGHTS (nothing is downloaded)"


@pytest.fixture(autouse=True)
def no_weights(monkeypatch):
    monkeypatch.delenv("PBGAN_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("PBGAN_LPIPS_WEIGHTS", raising=False)
    M.configure()
    M._cache.clear()
    yield
    M.configure()
    M._cache.clear()


def images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) - 0.5


def test_identical_images():
    x = images()
    assert torch.equal(M.l1(x, x), torch.zeros(2))
    assert torch.isinf(M.psnr(x, x)).all()
    assert torch.allclose(M.ssim(x, x), torch.ones(2), atol=1e-4)
    assert M.l1(x, x).shape == M.psnr(x, x).shape == M.ssim(x, x).shape == (2,)


def test_constant_offset():
    x = images()
    y = x.clone()
    y[0] += 0.2  # 0.1 on the [0, 1] scale
    y[1] -= 0.4  # 0.2 on the [0, 1] scale
    assert torch.allclose(M.l1(y, x), torch.tensor([0.1, 0.2]), atol=1e-5)
    expected = torch.tensor([10 * math.log10(1 / 0.01), 10 * math.log10(1 / 0.04)])
    assert torch.allclose(M.psnr(y, x), expected, atol=1e-3)
    s = M.ssim(y, x)
    assert s.shape == (2,) and (s < 1).all() and s[0] > s[1]


def test_register_metrics():
    got = {}
    M.register_metrics(lambda m: got.setdefault(m.name, m))
    assert set(got) == {"l1", "psnr", "ssim", "lpips", "fid"}
    assert all(isinstance(m, Metric) for m in got.values())
    assert got["psnr"].higher_is_better and got["ssim"].higher_is_better
    assert not got["l1"].higher_is_better and not got["lpips"].higher_is_better and not got["fid"].higher_is_better
    assert getattr(got["fid"], "set_level", False) and not getattr(got["psnr"], "set_level", False)


def test_frechet_identical_and_1d():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    mu, cov = a.mean(0), np.cov(a, rowvar=False)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-8
    mu1, s1, mu2, s2 = 1.0, 4.0, -2.0, 9.0
    want = (mu1 - mu2) ** 2 + s1 + s2 - 2 * math.sqrt(s1 * s2)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - want) < 1e-9
    # diagonal covariances: sum of the 1-D closed forms
    d1, d2 = torch.tensor([1.0, 4.0]), torch.tensor([9.0, 1.0])
    got = frechet_distance(torch.zeros(2), torch.diag(d1), torch.ones(2), torch.diag(d2))
    want = 2 + float((d1 + d2 - 2 * (d1 * d2).sqrt()).sum())
    assert abs(got - want) < 1e-9


def test_fid_without_weights():
    with pytest.raises(PbganError) as err:
        FIDMetric()
    assert str(err.value) == FID_MSG
    fid = {}
    M.register_metrics(lambda m: fid.setdefault(m.name, m))
    with pytest.raises(PbganError, match="--fid-weights"):
        fid["fid"].accumulator()
    with pytest.raises(PbganError, match="PBGAN_FID_WEIGHTS"):
        fid["fid"].fn(images(), images())


def test_lpips_without_weights():
    with pytest.raises(PbganError, match="--lpips-weights PATH or set PBGAN_LPIPS_WEIGHTS"):
        M.lpips(images(), images())
    with pytest.raises(PbganError, match="lpips needs LPIPS weights"):
        build_lpips()


def test_missing_file_named(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    monkeypatch.setenv("PBGAN_FID_WEIGHTS", str(missing))
    with pytest.raises(PbganError, match="nope.pth"):
        FIDMetric()
    M.configure(lpips_weights=missing)
    with pytest.raises(PbganError, match="nope.pth"):
        M.lpips(images(), images())


def test_wrong_keys_named(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(1)}, bad)
    with pytest.raises(PbganError, match="bad.pth.*missing keys"):
        load_fid_inception(bad)
    with pytest.raises(PbganError, match="bad.pth"):
        load_lpips(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PbganError, match="junk.pth"):
        load_fid_inception(junk)


def test_fid_random_network_runs():
    torch.manual_seed(0)
    metric = FIDMetric(allow_random=True, resize_input=False)
    metric.update(fake=images(2, 75, seed=1), real=images(2, 75, seed=2))
    value = metric.compute()
    assert math.isfinite(value) and value > 0


def test_fid_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    net = FIDInceptionV3(resize_input=False)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.zeros(1008, 2048)  # the pt_inception classifier is ignored
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    loaded = load_fid_inception(path, resize_input=False)
    x = images(2, 75)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    shaped = dict(state)
    shaped["Conv2d_1a_3x3.conv.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(shaped, path)
    with pytest.raises(PbganError, match="pt_inception.pth.*Conv2d_1a_3x3.conv.weight"):
        load_fid_inception(path)


def test_fid_small_extractor():
    # FIDMetric with a tiny feature extractor: mean shift shows up as ||dmu||^2
    extractor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    metric = FIDMetric(feature_extractor=extractor)
    x = images(8, 2, seed=4)
    metric.update(fake=x + 0.5, real=x)
    assert abs(metric.compute() - 0.25 * 12) < 1e-6
    same = FIDMetric(feature_extractor=extractor)
    same.update(x, x)
    assert abs(same.compute()) < 1e-6
    with pytest.raises(PbganError, match="at least 2"):
        FIDMetric(feature_extractor=extractor).compute()


def test_lpips_random_network(tmp_path):
    torch.manual_seed(0)
    net = LPIPS("alex")
    x, y = images(2, 32, seed=5), images(2, 32, seed=6)
    with torch.no_grad():
        assert torch.equal(net(x, x), torch.zeros(2))
        d = net(x, y)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    # save in the documented layout and use it through the registered metric
    path = tmp_path / "lpips_alex.pth"
    torch.save(net.state_dict(), path)
    assert any(k.startswith("net.slice1.0.") for k in net.state_dict())
    assert "lin0.model.1.weight" in net.state_dict()
    M.configure(lpips_weights=path)
    assert torch.allclose(M.lpips(x, y), d, atol=1e-6)
    assert torch.equal(M.lpips(x, x), torch.zeros(2))


def test_lpips_combine_layouts():
    alex = LPIPS("alex")
    backbone = {}
    for k, v in alex.net.state_dict().items():
        backbone["features." + k.split(".", 1)[1]] = v
    lins = {k.replace("model.1", "model.0"): v for k, v in alex.state_dict().items() if k.startswith("lin")}
    merged = combine_lpips_weights(backbone, lins, "alex")
    assert set(merged) == set(alex.state_dict())
    vgg_keys = set(LPIPS("vgg").state_dict())
    assert "net.slice5.28.weight" in vgg_keys and "lin4.model.1.weight" in vgg_keys


def test_frechet_matches_product_eigenvalues():
    # tr sqrt(S1 S2) equals the sum of square roots of the eigenvalues of S1 S2
    rng = np.random.default_rng(1)
    for n in (3, 40):  # rank-deficient and full-rank covariances in 6-D
        a, b = rng.normal(size=(n, 6)), rng.normal(size=(n, 6)) * 2 + 1
        mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
        mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
        want = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
        assert abs(frechet_distance(mu1, s1, mu2, s2) - want) < 1e-6 * max(1.0, want)
