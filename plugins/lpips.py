"""LPIPS (Zhang et al. 2018), the linearly calibrated perceptual distance, weights from a file.

Nothing is ever downloaded. The weights are given as ONE state-dict file
(``--lpips-weights PATH`` / env ``PBGAN_LPIPS_WEIGHTS``; a ``torch.save``'d dict read
with ``torch.load(..., weights_only=True)``, or a ``.safetensors`` file) holding both
the backbone and the linear calibration layers, in the layout of the reference
``lpips.LPIPS(net=...)`` module's ``state_dict()``:

AlexNet backbone (``net='alex'``, the standard choice), torchvision ``alexnet.features``
indices kept inside five slices::

    net.slice1.0.{weight,bias}    Conv2d(3, 64, 11, stride 4, pad 2)
    net.slice2.3.{weight,bias}    Conv2d(64, 192, 5, pad 2)
    net.slice3.6.{weight,bias}    Conv2d(192, 384, 3, pad 1)
    net.slice4.8.{weight,bias}    Conv2d(384, 256, 3, pad 1)
    net.slice5.10.{weight,bias}   Conv2d(256, 256, 3, pad 1)

VGG16 backbone (``net='vgg'``)::

    net.slice1.{0,2}.*  net.slice2.{5,7}.*  net.slice3.{10,12,14}.*
    net.slice4.{17,19,21}.*  net.slice5.{24,26,28}.*

Linear layers (1x1 convs, no bias, one per slice, k = 0..4)::

    lin{k}.model.1.weight         shape (1, C_k, 1, 1); C = 64,192,384,256,256 (alex)
                                  or 64,128,256,512,512 (vgg)

``lin{k}.model.0.weight`` (saved without dropout) is accepted too, as are the constant
``scaling_layer.shift`` / ``scaling_layer.scale`` buffers (ignored). The backbone kind is
detected from the keys. The official ``alex.pth`` from the lpips package holds only the
``lin*`` keys; :func:`combine_lpips_weights` merges it with torchvision's ImageNet
``alexnet``/``vgg16`` state dict (``features.N.*``) into the single file expected here.

Inputs are images in ``[-1, 1]``; ``LPIPS(x, y)`` returns ``(N,)``, 0 when ``x == y``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from pbgan_core.errors import PbganError

from .fid import load_checked, load_state_dict_file

LPIPS_WEIGHTS_ENV = "PBGAN_LPIPS_WEIGHTS"
MISSING_LPIPS_WEIGHTS = ("lpips needs LPIPS weights: pass --lpips-weights PATH or set "
                         f"{LPIPS_WEIGHTS_ENV} (nothing is downloaded)")

# (kind, index in torchvision `features`, in, out, kernel, stride, padding) per conv;
# slices are given by the feature index where each ends (exclusive).
_ALEX_CONVS = [(0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1),
               (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1)]
_ALEX_POOLS = (2, 5)
_ALEX_SLICES = (2, 5, 8, 10, 12)

_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_SLICES = (4, 9, 16, 23, 30)

CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _alex_features() -> list[nn.Module]:
    layers: dict[int, nn.Module] = {}
    for idx, cin, cout, k, s, p in _ALEX_CONVS:
        layers[idx] = nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p)
        layers[idx + 1] = nn.ReLU(inplace=False)
    for idx in _ALEX_POOLS:
        layers[idx] = nn.MaxPool2d(kernel_size=3, stride=2)
    return [layers[i] for i in range(max(layers) + 1)]


def _vgg_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return layers


class LPIPSBackbone(nn.Module):
    """The five-slice feature pyramid (conv-relu outputs) of AlexNet or VGG16."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in CHANNELS:
            raise PbganError(f"unknown LPIPS backbone {net!r}; choose alex or vgg")
        features = _alex_features() if net == "alex" else _vgg_features()
        bounds = _ALEX_SLICES if net == "alex" else _VGG_SLICES
        start = 0
        for i, end in enumerate(bounds, 1):
            piece = nn.Sequential()
            for j in range(start, end):
                piece.add_module(str(j), features[j])
            setattr(self, f"slice{i}", piece)
            start = end

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, 6):
            x = getattr(self, f"slice{i}")(x)
            outs.append(x)
        return outs


class NetLinLayer(nn.Module):
    """Dropout + 1x1 conv to one channel, no bias (keys ``model.1.weight``)."""

    def __init__(self, chn_in: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, kernel_size=1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance; ``forward(x, y)`` on images in ``[-1, 1]`` returns ``(N,)``.

    Randomly initialized (with non-negative linear weights, so distances stay >= 0)
    until weights are loaded; use :func:`load_lpips` for the real network.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net_kind = net
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = LPIPSBackbone(net)
        for k, c in enumerate(CHANNELS[net]):
            lin = NetLinLayer(c)
            nn.init.constant_(lin.model[1].weight, 1.0 / c)
            setattr(self, f"lin{k}", lin)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise PbganError(f"lpips expects two (N, 3, H, W) batches of one shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for k, (a, b) in enumerate(zip(fx, fy)):
            diff = (self._unit(a) - self._unit(b)) ** 2
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(1, 2, 3))
        return total


def _detect_kind(state: dict[str, torch.Tensor]) -> str:
    return "vgg" if any(k.startswith("net.slice5.28.") for k in state) else "alex"


def _normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith("scaling_layer."):
            continue
        if k.startswith("lin") and ".model.0.weight" in k:
            k = k.replace(".model.0.weight", ".model.1.weight")
        out[k] = v
    return out


def load_lpips(path) -> LPIPS:
    """Build :class:`LPIPS` (backbone detected from the keys) and load ``path`` into it."""
    state = _normalize_keys(load_state_dict_file(path, "lpips"))
    model = LPIPS(_detect_kind(state))
    load_checked(model, state, path, "lpips")
    return model.eval()


def resolve_lpips_weights(weights=None) -> Optional[str]:
    """``weights`` if given, else ``$PBGAN_LPIPS_WEIGHTS`` if set and non-empty, else None."""
    if weights:
        return str(weights)
    env = os.environ.get(LPIPS_WEIGHTS_ENV, "").strip()
    return env or None


def build_lpips(weights=None, allow_random: bool = False, net: str = "alex") -> LPIPS:
    """The LPIPS network from ``weights`` / ``$PBGAN_LPIPS_WEIGHTS``, or random if allowed."""
    path = resolve_lpips_weights(weights)
    if path is not None:
        return load_lpips(path)
    if allow_random:
        return LPIPS(net)
    raise PbganError(MISSING_LPIPS_WEIGHTS)


def combine_lpips_weights(backbone_state: dict[str, torch.Tensor], lin_state: dict[str, torch.Tensor],
                          net: str = "alex") -> dict[str, torch.Tensor]:
    """Merge torchvision ``alexnet``/``vgg16`` weights (``features.N.*``) and the lpips
    package's linear layers (``lin{k}.model.1.weight``) into the single-file layout.

    Save the result with ``torch.save(result, path)`` and pass that path.
    """
    bounds = _ALEX_SLICES if net == "alex" else _VGG_SLICES
    out: dict[str, torch.Tensor] = {}
    for k, v in backbone_state.items():
        if not k.startswith("features."):
            continue
        idx = int(k.split(".")[1])
        slice_no = next(i for i, end in enumerate(bounds, 1) if idx < end)
        out[f"net.slice{slice_no}.{k[len('features.'):]}"] = v
    out.update(_normalize_keys({k: v for k, v in lin_state.items() if k.startswith("lin")}))
    return out
