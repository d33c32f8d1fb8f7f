"""Metrics: l1/psnr/ssim by hand-checkable values; fid/kid through torchmetrics with a small
stand-in feature extractor; lpips and the real Inception only where their weights and packages are."""
import importlib
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from pbgan_core.errors import PbganError
from pbgan_core.interfaces import Metric
from pbgan_plugins import metrics as M

needs_torchmetrics = pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None,
                                        reason="torchmetrics is not installed (pip install -e \".[test]\")")


def _loads(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # absent, or torchvision wheels built for another torch
        return False


@pytest.fixture(autouse=True)
def no_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("PBGAN_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("PBGAN_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    M.configure()
    M._cache.clear()
    yield
    M.configure()
    M._cache.clear()


def images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) - 0.5


class StandIn(torch.nn.Module):
    """A small fixed feature extractor in place of Inception: (N, 3, H, W) in [0, 1] -> (N, 8)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return torch.tanh(self.conv(x.float())).mean((2, 3)) + x.float().mean((1, 2, 3))[:, None]


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
    assert set(got) == {"l1", "psnr", "ssim", "lpips", "fid", "kid"}
    assert all(isinstance(m, Metric) for m in got.values())
    assert got["psnr"].higher_is_better and got["ssim"].higher_is_better
    assert not any(got[n].higher_is_better for n in ("l1", "lpips", "fid", "kid"))
    assert all(getattr(got[n], "set_level", False) for n in ("fid", "kid"))
    assert not getattr(got["psnr"], "set_level", False)
    with pytest.raises(PbganError, match="set-level metric"):
        got["kid"].fn(images(), images())


@needs_torchmetrics
@pytest.mark.parametrize("name", ["fid", "kid"])
def test_set_scores_with_a_stand_in_extractor(name):
    real, other = images(12, seed=1), images(12, seed=2) * 0.2 + 0.6

    def score(fake):
        acc = M.SET_LEVEL[name].accumulator(feature_extractor=StandIn())
        for i in range(0, 12, 5):  # batches of uneven size
            acc.update(fake[i:i + 5], real[i:i + 5])
        return acc.compute()

    same, apart = score(real), score(other)
    assert abs(same) < 1e-3 and apart > 10 * max(abs(same), 1e-4)
    assert score(other) == apart  # kid's random subsets are seeded: one value per input


@needs_torchmetrics
def test_set_score_needs_two_images_of_each():
    acc = M.set_score("fid", feature_extractor=StandIn())
    acc.update(images(1), images(1))
    with pytest.raises(PbganError, match="fid needs at least 2 generated and 2 real images, got 1 and 1"):
        acc.compute()


@pytest.mark.parametrize("name, flag, file", [("fid", "--fid-weights", M.INCEPTION_FILE),
                                              ("kid", "--fid-weights", M.INCEPTION_FILE)])
def test_missing_inception_weights_name_the_file_and_where(name, flag, file, tmp_path):
    with pytest.raises(PbganError) as info:
        M.set_score(name)
    message = str(info.value)
    assert file in message and str(tmp_path / "torch-home" / "hub" / "checkpoints") in message and flag in message
    assert "\n" not in message
    M.configure(fid_weights=tmp_path / "nowhere.pth")
    with pytest.raises(PbganError, match=f"{flag} names {tmp_path / 'nowhere.pth'}, which does not exist"):
        M.set_score(name)


def test_missing_lpips_weights_name_the_file_and_where(tmp_path, monkeypatch):
    with pytest.raises(PbganError, match=M.ALEXNET_FILE) as info:
        M.lpips(images(), images())
    assert "--lpips-weights" in str(info.value) and "TORCH_HOME" in str(info.value)
    monkeypatch.setenv("PBGAN_LPIPS_WEIGHTS", str(tmp_path / "alex.pth"))
    with pytest.raises(PbganError, match="alex.pth, which does not exist"):
        M.lpips(images(), images())


@pytest.mark.skipif(_loads("torchvision"), reason="torchvision loads here: the unusable-package path cannot occur")
def test_lpips_without_a_loadable_torchvision_is_one_line(tmp_path):
    weights = tmp_path / M.ALEXNET_FILE
    torch.save({}, weights)
    M.configure(lpips_weights=weights)
    with pytest.raises(PbganError, match=r'lpips needs torchmetrics, torch-fidelity and torchvision .*pbgan\[metrics\]'):
        M.lpips(images(), images())
    with pytest.raises(PbganError, match=re.escape(M.install_command())):
        M.lpips(images(), images())


@pytest.mark.parametrize("version, command", [
    ("2.13.0+cpu", "pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu && "
                   "pip install \"pbgan[metrics]\" torch-fidelity"),
    ("2.13.0+cu128", "pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cu128"),
    ("2.13.0", "pip install torchvision==0.28.0 && "),
    ("2.12.1", "torchvision==0.27.1 && "),
])
def test_install_command_keeps_the_installed_torch(version, command):
    assert command in M.install_command(version)


@pytest.mark.skipif(not _loads("torchvision") or not _loads("torchmetrics"),
                    reason="torchvision does not load with this torch build (CPU torch, PyPI torchvision)")
def test_lpips_with_a_random_alexnet_backbone(tmp_path):
    import torchvision

    weights = tmp_path / M.ALEXNET_FILE
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    M.configure(lpips_weights=weights)
    x, y = images(), images(seed=3)
    assert torch.allclose(M.lpips(x, x), torch.zeros(2), atol=1e-6)
    assert (M.lpips(x, y) > 0).all() and M.lpips(x, y).shape == (2,)


REAL_INCEPTION = [p for p in (Path(torch.hub.get_dir()) / "checkpoints" / M.INCEPTION_FILE,) if p.is_file()]


@pytest.mark.skipif(not REAL_INCEPTION or not _loads("torch_fidelity"),
                    reason=f"no {M.INCEPTION_FILE} in the torch hub cache, or torch-fidelity does not load")
def test_fid_with_the_real_inception():
    M.configure(fid_weights=REAL_INCEPTION[0])
    acc = M.set_score("fid")
    acc.update(images(4, 32), images(4, 32, seed=5))
    assert acc.compute() > 0


@pytest.mark.skipif(not _loads("torchmetrics"), reason="torchmetrics does not load")
@pytest.mark.parametrize("name", ["fid", "kid"])
def test_without_torch_fidelity_fid_and_kid_say_so_not_blame_the_weights(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    weights = tmp_path / M.INCEPTION_FILE
    torch.save({}, weights)
    M.configure(fid_weights=weights)
    with pytest.raises(PbganError) as info:
        M.set_score(name)
    message = str(info.value)
    assert "needs the torch-fidelity package, which is not installed" in message and "pip install" in message
    assert "is not torch-fidelity's Inception weights" not in message and "\n" not in message
