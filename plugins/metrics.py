"""Image-quality metrics: per-image l1 / psnr / ssim (kornia) and lpips, set-level fid and kid
(torchmetrics; the Inception network comes from torch-fidelity, LPIPS's backbone from torchvision:
install torchvision built for your torch first, then `pip install "pbgan[metrics]" torch-fidelity`;
`install_command()` spells it out for the installed torch).

Every per-image metric takes ``(pred, target)`` batches in ``[-1, 1]`` and returns a ``(N,)``
tensor. l1, psnr and ssim map the images to ``[0, 1]`` first (clamped).

Nothing is downloaded. Weights are read from where those libraries keep them, the torch hub
cache (``$TORCH_HOME/hub/checkpoints``), unless a file is named:

* fid, kid: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``, or
  ``--fid-weights PATH`` / ``$PBGAN_FID_WEIGHTS`` (torchmetrics' ``feature_extractor_weights_path``);
* lpips: torchvision's AlexNet ``alexnet-owt-7be5be79.pth``, or ``--lpips-weights PATH`` /
  ``$PBGAN_LPIPS_WEIGHTS``; the LPIPS linear layers ship with torchmetrics.

fid and kid are set-level (``set_level = True``): ``metric.accumulator()`` returns an object with
``update(fake, real)`` per batch and ``compute() -> float``. KID is unbiased, so it stays
meaningful on the few dozen test images a task has; it is reported beside FID.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import kornia
import torch

from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.interfaces import Metric

FID_WEIGHTS_ENV = "PBGAN_FID_WEIGHTS"
LPIPS_WEIGHTS_ENV = "PBGAN_LPIPS_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's file name
KID_SUBSET_SIZE = 1000  # torchmetrics' default; smaller sets use all their images

_configured: dict[str, Optional[str]] = {"fid": None, "lpips": None}
_cache: dict[tuple, torch.nn.Module] = {}


def configure(fid_weights=None, lpips_weights=None) -> None:
    """Set the weight paths from `--fid-weights` / `--lpips-weights` (None: env, then hub cache)."""
    _configured["fid"] = str(fid_weights) if fid_weights else None
    _configured["lpips"] = str(lpips_weights) if lpips_weights else None


def hub_checkpoints() -> Path:
    """Where torch.hub (and so torchvision and torch-fidelity) keeps downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(metric: str, configured: str | None, env: str, file: str, flag: str) -> Path:
    """The weights file to use: the flag, the environment variable, else the hub cache. Missing: one line."""
    named = configured or os.environ.get(env)
    path = Path(named) if named else hub_checkpoints() / file
    if not path.is_file():
        where = f"{flag} names {path}, which" if named else f"{path}"
        raise PbganError(f"{metric} needs {file}: {where} does not exist; put the file in {hub_checkpoints()} "
                         f"(the torch hub cache under $TORCH_HOME) or pass {flag} PATH (nothing is downloaded)")
    return path


def install_command(torch_version: str | None = None) -> str:
    """The pip commands that add torchvision built for the installed torch (so pip keeps that torch),
    then torchmetrics and torch-fidelity, which would otherwise pull the newest torchvision and torch."""
    release, _, build = (torch_version or torch.__version__).partition("+")
    major, minor, patch = (release.split(".") + ["0", "0"])[:3]
    vision = f"torchvision==0.{int(minor) + 15}.{patch}" if major == "2" else "torchvision (the build for your torch)"
    index = f" --index-url https://download.pytorch.org/whl/{build}" if build else ""  # cpu, cu128, rocm...
    return f"pip install {vision}{index} && pip install \"pbgan[metrics]\" torch-fidelity"


def _import_failed(metric: str, exc: Exception) -> PbganError:
    first = (str(exc).splitlines() or [""])[0]
    return PbganError(f"{metric} needs torchmetrics, torch-fidelity and torchvision built for torch "
                      f"{torch.__version__} ({type(exc).__name__}: {first}); install them without replacing torch: "
                      f"{install_command()}")


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


# -----------------------------------------------------------------------------
# lpips: torchmetrics' LPIPS network (AlexNet backbone)


def lpips_network(path: str | Path) -> torch.nn.Module:
    """torchmetrics' LPIPS (AlexNet) with the backbone read from a torchvision AlexNet state dict."""
    try:
        from torchmetrics.functional.image.lpips import _NoTrainLpips
        net = _NoTrainLpips(net="alex", pnet_rand=True)  # a random backbone: nothing downloads
    except Exception as exc:  # missing package, or a torchvision whose ops do not load with this torch
        raise _import_failed("lpips", exc) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # torchmetrics slices AlexNet's `features` keeping their indices: slice2.3.weight is features.3.weight
        backbone = {k: state["features." + k.split(".", 1)[1]] for k in net.net.state_dict()}
        net.net.load_state_dict(backbone)
    except Exception as exc:
        raise PbganError(f"{path} is not torchvision's AlexNet state dict ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0]}); use {ALEXNET_FILE}") from None
    return net.eval()


def lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image (lower is better); loads the network on first use."""
    _check_pair(pred, target, "lpips")
    path = weights_file("lpips", _configured["lpips"], LPIPS_WEIGHTS_ENV, ALEXNET_FILE, "--lpips-weights")
    key = ("lpips", str(path), str(pred.device))
    if key not in _cache:
        _cache[key] = lpips_network(path).to(pred.device)
    with torch.no_grad():
        return _cache[key](pred.float().clamp(-1, 1), target.float().clamp(-1, 1)).flatten()


# -----------------------------------------------------------------------------
# fid and kid: torchmetrics over torch-fidelity's Inception features


class SetScore:
    """Accumulates generated and real images for one torchmetrics set metric; `compute()` gives a float."""

    def __init__(self, name: str, metric, minimum: int):
        self.name, self.metric, self.minimum, self.counts = name, metric, minimum, [0, 0]

    def update(self, fake: torch.Tensor | None = None, real: torch.Tensor | None = None) -> None:
        for i, (images, is_real) in enumerate(((fake, False), (real, True))):
            if images is not None:
                self.metric.update(_unit(images).to(self.metric.device), real=is_real)
                self.counts[i] += images.shape[0]

    def compute(self) -> float:
        if min(self.counts) < self.minimum:
            raise PbganError(f"{self.name} needs at least {self.minimum} generated and {self.minimum} real images, "
                             f"got {self.counts[0]} and {self.counts[1]}; evaluate on more test images (--images)")
        if self.name == "kid":  # unbiased on any set size: subsets of all the images the set has
            self.metric.subset_size = min(KID_SUBSET_SIZE, *self.counts)
        with torch.random.fork_rng(devices=[]):  # kid draws its subsets at random
            torch.manual_seed(0)
            value = self.metric.compute()
        return float(value[0] if isinstance(value, tuple) else value)


class InceptionFeatures(torch.nn.Module):
    """torch-fidelity's Inception v3 (2048 pool features, as FID is defined) taking images in [0, 1]."""

    num_features = 2048

    def __init__(self, path: str | Path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                             feature_extractor_weights_path=str(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception((x * 255).byte())  # quantized as torchmetrics does for its own network


def require_torch_fidelity(metric: str) -> None:
    """torchmetrics imports without torch-fidelity and fails only when the network is built."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise PbganError(f"{metric} needs the torch-fidelity package, which is not installed; install it with "
                         f"{install_command()}") from None


def inception_features(path: Path) -> InceptionFeatures:
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3  # noqa: F401
    except Exception as exc:
        raise _import_failed("fid and kid", exc) from None
    require_torch_fidelity("fid and kid")
    try:
        return InceptionFeatures(path)
    except Exception as exc:
        raise PbganError(f"{path} is not torch-fidelity's Inception weights ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0]}); use {INCEPTION_FILE}") from None


def set_score(name: str, device=None, feature_extractor: torch.nn.Module | None = None) -> SetScore:
    """A fresh fid or kid accumulator: Inception features from the configured/env/hub weights, or a
    given feature extractor (a module mapping (N, 3, H, W) images in [0, 1] to (N, F) features)."""
    try:
        if feature_extractor is None:
            path = weights_file(name, _configured["fid"], FID_WEIGHTS_ENV, INCEPTION_FILE, "--fid-weights")
            key = ("inception", str(path))
            if key not in _cache:
                _cache[key] = inception_features(path)
            feature_extractor = _cache[key]
        if name == "fid":
            from torchmetrics.image.fid import FrechetInceptionDistance
            metric = FrechetInceptionDistance(feature=feature_extractor, normalize=True)
        else:
            from torchmetrics.image.kid import KernelInceptionDistance
            with warnings.catch_warnings():  # kid keeps every feature: a few KB per test image here
                warnings.simplefilter("ignore", UserWarning)
                metric = KernelInceptionDistance(feature=feature_extractor, normalize=True,
                                                 subset_size=KID_SUBSET_SIZE)
    except PbganError:
        raise
    except Exception as exc:  # missing packages, or a torchvision whose ops do not load with this torch
        raise _import_failed(name, exc) from None
    return SetScore(name, metric.to(device or "cpu"), minimum=2)


@dataclass
class SetMetric(Metric):
    """A metric over whole sets of images; ``accumulator()`` returns an object with
    ``update(fake, real)`` and ``compute() -> float``. ``fn`` is not usable per image."""

    accumulator: Callable[..., SetScore] = field(default=None)
    set_level = True


def _set_level_only(name: str) -> Callable:
    def fn(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise PbganError(f"{name} is a set-level metric, not per-image: accumulate with metric.accumulator() "
                         "(update(fake, real) per batch, then compute())")
    return fn


PER_IMAGE = {
    "l1": Metric("l1", l1, higher_is_better=False, description="mean absolute error on the [0, 1] scale"),
    "psnr": Metric("psnr", psnr, higher_is_better=True, description="peak signal-to-noise ratio in dB (max 1.0)"),
    "ssim": Metric("ssim", ssim, higher_is_better=True, description="structural similarity, window 11"),
    "lpips": Metric("lpips", lpips, higher_is_better=False,
                    description=f"learned perceptual distance (torchmetrics, AlexNet); needs {ALEXNET_FILE}"),
}
SET_LEVEL = {
    name: SetMetric(name, _set_level_only(name), higher_is_better=False,
                    description=f"{title} (torchmetrics, Inception features); needs {INCEPTION_FILE}",
                    accumulator=lambda device=None, feature_extractor=None, _name=name: set_score(
                        _name, device, feature_extractor))
    for name, title in (("fid", "Frechet Inception Distance"), ("kid", "Kernel Inception Distance, unbiased"))
}


@hookimpl
def register_metrics(register):
    for metric in (*PER_IMAGE.values(), *SET_LEVEL.values()):
        register(metric)


__all__ = ["l1", "psnr", "ssim", "lpips", "configure", "set_score", "SetMetric", "SetScore", "register_metrics",
           "weights_file", "hub_checkpoints"]
