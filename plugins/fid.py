"""Frechet Inception Distance with the FID variant of Inception-v3, weights from a local file.

Nothing is ever downloaded. The weights are the ones pytorch-fid uses,
``pt_inception-2015-12-05-6726825d.pth`` (a port of the TensorFlow 2015 Inception graph
the original FID code used), given as a path:

* ``--fid-weights PATH`` / env ``PBGAN_FID_WEIGHTS``;
* a ``torch.save``'d state dict (read with ``torch.load(path, weights_only=True,
  map_location='cpu')``) or a ``.safetensors`` file with the same keys.

Key layout (torchvision's Inception3 naming, which the ported file uses)::

    Conv2d_1a_3x3.conv.weight, Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}
    Conv2d_2a_3x3.*, Conv2d_2b_3x3.*, Conv2d_3b_1x1.*, Conv2d_4a_3x3.*
    Mixed_5b.branch1x1.conv.weight, Mixed_5b.branch1x1.bn.*, ... Mixed_7c.branch_pool.bn.*

``fc.*`` (the 1008-way classifier), ``AuxLogits.*`` and ``*.num_batches_tracked`` are
accepted and ignored; every other key of :class:`FIDInceptionV3` must be present with
the right shape, and no unknown key may appear, else a ``PbganError`` names the file.

The network follows pytorch-fid's ``fid_inception_v3``: the Mixed_5*/6b-e/7b blocks
average-pool with ``count_include_pad=False`` and Mixed_7c max-pools its pool branch,
as the TF graph did. Images in ``[-1, 1]`` are bilinearly resized to 299x299
(``resize_input``) and mapped to 2048-d pool3 features.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pbgan_core.errors import PbganError

FID_WEIGHTS_ENV = "PBGAN_FID_WEIGHTS"
FID_FEATURE_DIM = 2048
MISSING_FID_WEIGHTS = ("fid needs Inception weights: pass --fid-weights PATH or set "
                       f"{FID_WEIGHTS_ENV} (nothing is downloaded)")


# --------------------------------------------------------------------------- weights files

def load_state_dict_file(path, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (torch pickle, weights only, or .safetensors).

    ``what`` names the weights in messages. Errors are ``PbganError`` naming the file.
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise PbganError(f"{what} weights file {str(p)!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:  # pragma: no cover - depends on the environment
                raise PbganError(f"{what} weights file {str(p)!r} is .safetensors but the "
                                 "safetensors package is not installed") from None
            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), weights_only=True, map_location="cpu")
    except PbganError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise PbganError(f"{what} weights file {str(p)!r} could not be read: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PbganError(f"{what} weights file {str(p)!r} does not hold a state dict of tensors")
    return dict(state)


def _short(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:4])
    return shown + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], path, what: str,
                 ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly, raising ``PbganError`` naming ``path``."""
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items()
             if not k.endswith("num_batches_tracked") and not k.startswith(ignore_prefixes)}
    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise PbganError(f"{what} weights file {str(path)!r} does not match the network: {'; '.join(parts)}")
    bad = [k for k, v in expected.items() if tuple(given[k].shape) != tuple(v.shape)]
    if bad:
        k = sorted(bad)[0]
        raise PbganError(f"{what} weights file {str(path)!r} does not match the network: {k} has shape "
                         f"{tuple(given[k].shape)}, expected {tuple(expected[k].shape)}"
                         + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
    full = module.state_dict()
    for k in expected:
        full[k] = given[k].to(dtype=full[k].dtype)
    module.load_state_dict(full, strict=True)


# --------------------------------------------------------------------------- network

class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class FIDInceptionA(nn.Module):
    """35x35 block; pool branch averages without counting padding."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorized 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with expanded filter banks.

    ``pool='avg'`` (Mixed_7b: average without counting padding) or ``pool='max'``
    (Mixed_7c: the TF graph max-pools here).
    """

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to pool3 (2048-d), in the FID variant; input in ``[-1, 1]``.

    ``forward(x)`` returns ``(N, 2048)``. With ``resize_input`` the images are
    bilinearly resized to 299x299 first (as pytorch-fid does); without it they must be
    at least 75x75. Randomly initialized unless weights are loaded (see
    :func:`load_fid_inception`).
    """

    def __init__(self, resize_input: bool = True):
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise PbganError(f"FID Inception expects (N, 3, H, W) images, got shape {tuple(x.shape)}")
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        elif min(x.shape[-2:]) < 75:
            raise PbganError(f"FID Inception needs images of at least 75x75 without resizing, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def load_fid_inception(path, resize_input: bool = True) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load the pt_inception weights from ``path``."""
    net = FIDInceptionV3(resize_input=resize_input)
    state = load_state_dict_file(path, "fid")
    load_checked(net, state, path, "fid", ignore_prefixes=("fc.", "AuxLogits."))
    return net.eval()


def resolve_fid_weights(weights=None) -> Optional[str]:
    """``weights`` if given, else ``$PBGAN_FID_WEIGHTS`` if set and non-empty, else None."""
    if weights:
        return str(weights)
    env = os.environ.get(FID_WEIGHTS_ENV, "").strip()
    return env or None


# --------------------------------------------------------------------------- distance

def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1^1/2 S2 S1^1/2))``, computed in
    float64 with symmetric eigen-decompositions (eigenvalues at round-off level or
    below are treated as 0). Accepts tensors, arrays or scalars (1-D Gaussians).
    """
    def as64(a):
        t = torch.as_tensor(np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a),
                            dtype=torch.float64)
        return t

    mu1, mu2 = as64(mu1).reshape(-1), as64(mu2).reshape(-1)
    s1, s2 = as64(sigma1), as64(sigma2)
    d = mu1.numel()
    s1, s2 = s1.reshape(d, d), s2.reshape(d, d)
    if mu2.numel() != d or s2.shape != (d, d):
        raise PbganError(f"frechet_distance: mismatched shapes {tuple(mu1.shape)}/{tuple(s1.shape)} "
                         f"and {tuple(mu2.shape)}/{tuple(s2.shape)}")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    w1, v1 = torch.linalg.eigh(s1)
    # S1^1/2 = V D V^T over the range of S1 (eigenvalues at round-off level dropped); the
    # nonzero spectrum of S1^1/2 S2 S1^1/2 is that of the r x r matrix D V^T S2 V D, which
    # is much smaller when there are fewer samples than feature dimensions.
    keep = w1 > w1.abs().max().clamp(min=1e-300) * d * torch.finfo(torch.float64).eps
    v = v1[:, keep]
    root = w1[keep].sqrt()
    middle = root[:, None] * (v.T @ s2 @ v) * root[None, :]
    middle = (middle + middle.T) / 2
    tr_covmean = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    value = diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_covmean
    return float(value)


class _Moments:
    """Running sum and sum of outer products (float64) of feature vectors."""

    def __init__(self):
        self.n = 0
        self.sum = None
        self.outer = None

    def add(self, feats: torch.Tensor) -> None:
        f = feats.detach().to("cpu", torch.float64)
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, cov


class FIDMetric:
    """Set-level FID: ``update(fake, real)`` per batch (images in ``[-1, 1]``), ``compute()``.

    The feature network is, in order of precedence: ``feature_extractor`` (any module
    mapping ``(N, 3, H, W)`` to ``(N, D)``), the weights file ``weights``, the file named
    by ``$PBGAN_FID_WEIGHTS``, or, only with ``allow_random=True``, a randomly
    initialized :class:`FIDInceptionV3` (for tests; its numbers mean nothing).
    Without any of these a ``PbganError`` says how to provide weights.
    """

    def __init__(self, weights=None, allow_random: bool = False, feature_extractor: nn.Module | None = None,
                 device=None, resize_input: bool = True):
        if feature_extractor is not None:
            net = feature_extractor
        else:
            path = resolve_fid_weights(weights)
            if path is not None:
                net = load_fid_inception(path, resize_input=resize_input)
            elif allow_random:
                net = FIDInceptionV3(resize_input=resize_input)
            else:
                raise PbganError(MISSING_FID_WEIGHTS)
        self.net = net.eval()
        if device is not None:
            self.net.to(device)
        self.fake = _Moments()
        self.real = _Moments()

    def reset(self) -> None:
        self.fake = _Moments()
        self.real = _Moments()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.net.parameters(), None)
        if param is not None:
            images = images.to(device=param.device, dtype=param.dtype)
        feats = self.net(images)
        return feats.reshape(feats.shape[0], -1)

    def update(self, fake: torch.Tensor | None = None, real: torch.Tensor | None = None) -> None:
        """Add a batch of generated and/or real images (either may be None)."""
        if fake is not None:
            self.fake.add(self.features(fake))
        if real is not None:
            self.real.add(self.features(real))

    def compute(self) -> float:
        if self.fake.n < 2 or self.real.n < 2:
            raise PbganError(f"fid needs at least 2 generated and 2 real images, got {self.fake.n} and "
                             f"{self.real.n}")
        mu1, s1 = self.fake.stats()
        mu2, s2 = self.real.stats()
        return frechet_distance(mu1, s1, mu2, s2)
