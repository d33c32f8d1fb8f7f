"""Generators and discriminators for image-to-image GANs.

The module layouts (and so the state_dict keys and parameter counts) match the
reference pytorch-CycleGAN-and-pix2pix networks, so their checkpoints load here.
"""

import functools

import torch
from torch import nn
from torch.nn import init

# -----------------------------------------------------------------------------
# normalization


def get_norm_layer(name):
    """Return a factory `norm(num_channels) -> nn.Module` for 'batch', 'instance' or 'none'."""
    if name == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if name == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if name == "none":
        return lambda num_channels: nn.Identity()
    raise ValueError(f"unknown norm {name!r}: expected 'batch', 'instance' or 'none'")


def _uses_bias(norm_layer):
    # BatchNorm has its own shift, so convs before it skip the bias. InstanceNorm here is
    # not affine, so convs keep theirs. ('none' also gets no bias, as in the reference.)
    if isinstance(norm_layer, functools.partial):
        norm_layer = norm_layer.func
    return norm_layer is nn.InstanceNorm2d


# -----------------------------------------------------------------------------
# U-Net generator


UPSAMPLING = ("transpose", "resize")


def upsampling(kind, in_nc, out_nc, bias):
    """Layers that double the resolution: a transposed conv, or a resize followed by a conv."""
    if kind == "transpose":
        return [nn.ConvTranspose2d(in_nc, out_nc, kernel_size=4, stride=2, padding=1, bias=bias)]
    if kind == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_nc, out_nc, kernel_size=3, padding=1, bias=bias)]
    raise ValueError(f"unknown upsampling {kind!r}: expected one of {', '.join(UPSAMPLING)}")


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: downsample, run `submodule`, upsample, and concatenate with the input.

    |-- downsampling -- |submodule| -- upsampling --|
    The outermost level returns the upsampled output without the skip connection.
    `upsample` is "transpose" (the reference's 4x4 stride-2 transposed conv) or "resize"
    (nearest-neighbour 2x, then a 3x3 conv: no checkerboard artifacts, Odena et al. 2016).
    """

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None,
                 outermost=False, innermost=False, norm_layer=nn.BatchNorm2d, use_dropout=False,
                 upsample="transpose"):
        super().__init__()
        self.outermost = outermost
        use_bias = _uses_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        # the innermost level has no submodule, so nothing is concatenated before its upconv
        up_in = inner_nc if innermost else inner_nc * 2

        upconv = upsampling(upsample, up_in, outer_nc, bias=True if outermost else use_bias)
        if outermost:
            down = [downconv]
            up = [uprelu, *upconv, nn.Tanh()]
        elif innermost:
            down = [downrelu, downconv]
            up = [uprelu, *upconv, upnorm]
        else:
            down = [downrelu, downconv, downnorm]
            up = [uprelu, *upconv, upnorm]
            if use_dropout:
                up = up + [nn.Dropout(0.5)]
        middle = [] if innermost else [submodule]
        self.model = nn.Sequential(*down, *middle, *up)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with `num_downs` downsamplings: a 2**num_downs image reaches 1x1 at the bottleneck."""

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False,
                 upsample="transpose"):
        super().__init__()
        if num_downs < 1:
            raise ValueError(f"num_downs must be >= 1, got {num_downs}")
        # Level i (0 = outermost) goes outer -> inner channels, with inner = ngf * min(2**i, 8).
        # For num_downs >= 5 this is exactly the reference stack; smaller depths drop the
        # innermost levels instead of failing. Dropout sits in the ngf*8 -> ngf*8 middle levels.
        inner = [ngf * min(2 ** i, 8) for i in range(num_downs)]
        outer = [output_nc] + inner[:-1]
        block = None
        for i in reversed(range(num_downs)):
            block = UnetSkipConnectionBlock(
                outer[i], inner[i],
                input_nc=input_nc if i == 0 else None,
                submodule=block,
                outermost=i == 0,
                innermost=i == num_downs - 1,
                norm_layer=norm_layer,
                use_dropout=use_dropout and 4 <= i < num_downs - 1,
                upsample=upsample,
            )
        self.model = block

    def forward(self, x):
        return self.model(x)


def unet_depth(netG, size=None):
    """Number of downsamplings for 'unet_N' (log2 N) or 'auto' (log2 size)."""

    def log2_or_none(n):
        if isinstance(n, int) and not isinstance(n, bool) and n >= 2 and n & (n - 1) == 0:
            return n.bit_length() - 1
        return None

    if netG == "auto":
        depth = log2_or_none(size)
        if depth is None:
            raise ValueError(f"netG 'auto' needs an image size that is a power of two >= 2, got {size!r}")
        return depth
    if isinstance(netG, str) and netG.startswith("unet_"):
        n = netG[len("unet_"):]
        depth = log2_or_none(int(n)) if n.isdigit() else None
        if depth is None:
            raise ValueError(f"bad U-Net name {netG!r}: expected 'unet_N' with N a power of two >= 2 (e.g. unet_256)")
        return depth
    raise ValueError(f"not a U-Net generator name: {netG!r} (expected 'unet_N' or 'auto')")


# -----------------------------------------------------------------------------
# ResNet generator


class ResnetBlock(nn.Module):
    """Two 3x3 convs with a residual connection."""

    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        layers = []
        for j in range(2):
            pad, p = _padding(padding_type)
            layers += pad
            layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]
            if j == 0:
                layers += [nn.ReLU(True)]
                if use_dropout:
                    layers += [nn.Dropout(0.5)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


def _padding(padding_type):
    """(padding layers, conv padding) for a 3x3 conv."""
    if padding_type == "reflect":
        return [nn.ReflectionPad2d(1)], 0
    if padding_type == "replicate":
        return [nn.ReplicationPad2d(1)], 0
    if padding_type == "zero":
        return [], 1
    raise ValueError(f"unknown padding type {padding_type!r}: expected 'reflect', 'replicate' or 'zero'")


class ResnetGenerator(nn.Module):
    """Two stride-2 downsamplings, `n_blocks` ResNet blocks, two upsamplings (Johnson et al.)."""

    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.InstanceNorm2d,
                 use_dropout=False, n_blocks=9, padding_type="reflect"):
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        use_bias = _uses_bias(norm_layer)
        model = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        n_down = 2
        for i in range(n_down):
            c = ngf * 2 ** i
            model += [
                nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(c * 2),
                nn.ReLU(True),
            ]
        c = ngf * 2 ** n_down
        model += [ResnetBlock(c, padding_type, norm_layer, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(n_down):
            c = ngf * 2 ** (n_down - i)
            model += [
                nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias),
                norm_layer(c // 2),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


# -----------------------------------------------------------------------------
# discriminators


class NLayerDiscriminator(nn.Module):
    """PatchGAN: with n_layers=3, each output judges a 70x70 patch of the input."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        use_bias = _uses_bias(norm_layer)
        kw, padw = 4, 1
        seq = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last one keeps the resolution
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=stride, padding=padw, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq += [nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw)]  # 1-channel prediction map
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN: judges every pixel on its own."""

    def __init__(self, input_nc, ndf=64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=use_bias),
            norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=use_bias),
        )

    def forward(self, x):
        return self.net(x)


# -----------------------------------------------------------------------------
# builders and init


def build_generator(netG, input_nc, output_nc, ngf=64, norm="batch", use_dropout=False, size=None,
                    upsample="transpose"):
    """Generator by name: 'unet_N', 'auto' (U-Net as deep as `size` allows), 'resnet_9blocks', 'resnet_6blocks'.
    `upsample` (U-Nets only): 'transpose' (the reference) or 'resize' (resize-convolution)."""
    norm_layer = get_norm_layer(norm)
    if netG == "resnet_9blocks" or netG == "resnet_6blocks":
        n_blocks = 9 if netG == "resnet_9blocks" else 6
        return ResnetGenerator(input_nc, output_nc, ngf, norm_layer=norm_layer, use_dropout=use_dropout, n_blocks=n_blocks)
    if netG == "auto" or (isinstance(netG, str) and netG.startswith("unet_")):
        depth = unet_depth(netG, size)
        if size is not None and size % 2 ** depth != 0:
            raise ValueError(f"{netG} downsamples {depth} times, so the image size must be a multiple "
                             f"of {2 ** depth}; got {size} (use a smaller unet_N or netG 'auto')")
        return UnetGenerator(input_nc, output_nc, depth, ngf, norm_layer=norm_layer, use_dropout=use_dropout,
                             upsample=upsample)
    raise ValueError(f"unknown generator {netG!r}: expected 'unet_N', 'auto', 'resnet_9blocks' or 'resnet_6blocks'")


def build_discriminator(netD, input_nc, ndf=64, n_layers_d=3, norm="batch"):
    """Discriminator by name: 'basic' (70x70 PatchGAN), 'n_layers' (n_layers_d deep), 'pixel'."""
    norm_layer = get_norm_layer(norm)
    if netD == "basic":
        return NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=norm_layer)
    if netD == "n_layers":
        return NLayerDiscriminator(input_nc, ndf, n_layers=n_layers_d, norm_layer=norm_layer)
    if netD == "pixel":
        return PixelDiscriminator(input_nc, ndf, norm_layer=norm_layer)
    raise ValueError(f"unknown discriminator {netD!r}: expected 'basic', 'n_layers' or 'pixel'")


def check_discriminator_size(netD, input_nc, ndf, n_layers_d, norm, size):
    """Raise ValueError when `size` px images are too small for the discriminator's strides."""
    with torch.device("meta"):
        net = build_discriminator(netD, input_nc, ndf, n_layers_d, norm)
        try:
            net(torch.empty(1, input_nc, size, size))
        except (RuntimeError, ValueError):
            raise ValueError(f"{size} px images are too small for --netD {netD}"
                             f"{f' with --n-layers-d {n_layers_d}' if netD == 'n_layers' else ''}; use a larger "
                             "--size, --netD pixel, or --netD n_layers with fewer --n-layers-d") from None


INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


def init_weights(net, init_type="normal", init_gain=0.02):
    """Initialize conv/linear weights by `init_type` (biases 0) and BatchNorm to N(1, gain), 0."""
    if init_type not in INIT_TYPES:
        raise ValueError(f"unknown init type {init_type!r}: expected one of {', '.join(INIT_TYPES)}")

    def init_func(m):
        # Match on the class name as the reference does, so custom conv layers are covered too.
        name = type(m).__name__
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor) and ("Conv" in name or "Linear" in name):
            if init_type == "normal":
                init.normal_(weight, 0.0, init_gain)
            elif init_type == "xavier":
                init.xavier_normal_(weight, gain=init_gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(weight, a=0, mode="fan_in")
            else:
                init.orthogonal_(weight, gain=init_gain)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in name and isinstance(weight, torch.Tensor):
            # BatchNorm weight is a scale, so it is centred on 1
            init.normal_(weight, 1.0, init_gain)
            init.constant_(m.bias, 0.0)

    net.apply(init_func)
    return net
