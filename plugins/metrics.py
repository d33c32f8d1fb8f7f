"""Image-quality metrics: per-image l1 / psnr / ssim / lpips and set-level fid.

Every per-image metric takes ``(pred, target)`` batches in ``[-1, 1]`` and returns a
``(N,)`` tensor. l1, psnr and ssim map the images to ``[0, 1]`` first (clamped).

FID and LPIPS need their standard weights from local files; nothing is downloaded:

* ``--fid-weights PATH`` / ``$PBGAN_FID_WEIGHTS``: pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth`` (see :mod:`pbgan_plugins.fid`);
* ``--lpips-weights PATH`` / ``$PBGAN_LPIPS_WEIGHTS``: one file with the backbone
  ``net.*`` and ``lin*`` keys (see :mod:`pbgan_plugins.lpips`).

The CLI passes the flags on with :func:`configure` (they win over the environment);
the networks are loaded lazily, on the first call, and cached.

FID is not per-image. The registered ``fid`` entry is a :class:`SetMetric`
(``set_level = True``): an evaluator should check ``getattr(metric, "set_level", False)``
and use ``metric.accumulator()`` (a :class:`FIDMetric` with ``update(fake, real)`` /
``compute()``) instead of ``fn``. Calling its ``fn`` checks the weights are available
and then raises a ``PbganError`` saying so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import kornia
import torch

from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.interfaces import Metric
from pbgan_core.options import Option

from .fid import (FID_WEIGHTS_ENV, MISSING_FID_WEIGHTS, FIDInceptionV3, FIDMetric, frechet_distance,  # noqa: F401
                  load_fid_inception, resolve_fid_weights)
from .lpips import LPIPS, LPIPS_WEIGHTS_ENV, MISSING_LPIPS_WEIGHTS, build_lpips, resolve_lpips_weights

FID_WEIGHTS_OPTION = Option("fid-weights", None, "path to pt_inception-2015-12-05-6726825d.pth "
                            f"(or .safetensors) for fid; default ${FID_WEIGHTS_ENV}", type=str)
LPIPS_WEIGHTS_OPTION = Option("lpips-weights", None, "path to one LPIPS state dict (net.* and lin* keys); "
                              f"default ${LPIPS_WEIGHTS_ENV}", type=str)
OPTIONS = (FID_WEIGHTS_OPTION, LPIPS_WEIGHTS_OPTION)

_configured: dict[str, Optional[str]] = {"fid": None, "lpips": None}
_cache: dict[tuple, torch.nn.Module] = {}


def configure(fid_weights=None, lpips_weights=None) -> None:
    """Set the weight paths from `--fid-weights` / `--lpips-weights` (None: use the env)."""
    _configured["fid"] = str(fid_weights) if fid_weights else None
    _configured["lpips"] = str(lpips_weights) if lpips_weights else None


def _check_pair(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise PbganError(f"{name} expects two (N, C, H, W) batches of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image on the [0, 1] scale."""
    _check_pair(pred, target, "l1")
    return (_unit(pred) - _unit(target)).abs().flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR per image (max value 1.0 on the [0, 1] scale); inf for identical images."""
    _check_pair(pred, target, "psnr")
    p, t = _unit(pred), _unit(target)
    return torch.stack([kornia.metrics.psnr(p[i], t[i], 1.0) for i in range(p.shape[0])])


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image (Gaussian window 11, sigma 1.5, max value 1.0)."""
    _check_pair(pred, target, "ssim")
    if min(pred.shape[-2:]) <= 5:
        raise PbganError(f"ssim needs images larger than 5x5 (window 11), got {pred.shape[-2]}x{pred.shape[-1]}")
    return kornia.metrics.ssim(_unit(pred), _unit(target), window_size=11, max_val=1.0).flatten(1).mean(1)


def _lpips_net(device: torch.device) -> LPIPS:
    path = resolve_lpips_weights(_configured["lpips"])
    if path is None:
        raise PbganError(MISSING_LPIPS_WEIGHTS)
    key = ("lpips", path, str(device))
    if key not in _cache:
        _cache[key] = build_lpips(path).to(device).eval()
    return _cache[key]


def lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image (lower is better); loads the weights on first use."""
    _check_pair(pred, target, "lpips")
    net = _lpips_net(pred.device)
    with torch.no_grad():
        return net(pred.float(), target.float())


def fid_accumulator(device=None, feature_extractor: torch.nn.Module | None = None) -> FIDMetric:
    """A fresh :class:`FIDMetric` using the configured/env weights (network cached)."""
    if feature_extractor is None:
        path = resolve_fid_weights(_configured["fid"])
        if path is None:
            raise PbganError(MISSING_FID_WEIGHTS)
        key = ("fid", path)
        if key not in _cache:
            _cache[key] = load_fid_inception(path)
        feature_extractor = _cache[key]
    return FIDMetric(feature_extractor=feature_extractor, device=device)


def _fid_fn(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    fid_accumulator()  # raises the missing/bad weights error first
    raise PbganError("fid is a set-level metric, not per-image: accumulate with metric.accumulator() "
                     "(update(fake, real) per batch, then compute())")


@dataclass
class SetMetric(Metric):
    """A metric over whole sets of images; ``accumulator()`` returns an object with
    ``update(fake, real)`` and ``compute() -> float``. ``fn`` is not usable per image."""

    accumulator: Callable[..., FIDMetric] = field(default=fid_accumulator)
    set_level = True


PER_IMAGE = {
    "l1": Metric("l1", l1, higher_is_better=False, description="mean absolute error on the [0, 1] scale"),
    "psnr": Metric("psnr", psnr, higher_is_better=True, description="peak signal-to-noise ratio in dB (max 1.0)"),
    "ssim": Metric("ssim", ssim, higher_is_better=True, description="structural similarity, window 11"),
    "lpips": Metric("lpips", lpips, higher_is_better=False,
                    description="learned perceptual distance; needs --lpips-weights or $PBGAN_LPIPS_WEIGHTS"),
}
FID = SetMetric("fid", _fid_fn, higher_is_better=False,
                description="Frechet Inception Distance over the whole set; needs --fid-weights or "
                            "$PBGAN_FID_WEIGHTS", accumulator=fid_accumulator)


@hookimpl
def register_metrics(register):
    for metric in PER_IMAGE.values():
        register(metric)
    register(FID)


__all__ = ["l1", "psnr", "ssim", "lpips", "configure", "fid_accumulator", "SetMetric", "FIDMetric", "LPIPS",
           "FIDInceptionV3", "frechet_distance", "register_metrics", "OPTIONS", "FID_WEIGHTS_OPTION",
           "LPIPS_WEIGHTS_OPTION"]
