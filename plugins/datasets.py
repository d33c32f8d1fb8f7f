"""Dataset plugins: aligned A|B pairs (pix2pix), plain folders, conditions derived from photos,
and unaligned A/B folders (CycleGAN). Items are dicts of (3, H, W) tensors in [-1, 1]; the
direction is applied by the architecture, never here.

Images are loaded as the reference pix2pix/CycleGAN code loads them (Pipeline). Every file is
decoded once when the dataset is built: unreadable files are skipped and named in one warning,
and the resized 8-bit images are kept in memory when they fit (CACHE_BYTES)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import kornia
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import Dataset

from pbgan_core.errors import PbganError
from pbgan_core.hookspecs import hookimpl
from pbgan_core.images import (BadImage, is_pair, list_images, normalize, open_rgb, pil_to_uint8, resize_bicubic, split_pair,
                               warn_skipped)
from pbgan_core.interfaces import DatasetPlugin
from pbgan_core.options import Option

CACHE_BYTES = 2 * 1024**3

COMMON = (
    Option("load-size", 0, "resize to this before the random crop when training (0: round(size*286/256))",
           min=0),
    Option("no-flip", False, "no random horizontal flips when training"),
    Option("max-images", 0, "use at most this many images (0: all)", min=0),
    Option("preprocess", "resize_and_crop", "resize_and_crop: resize to load-size, random crop to size "
           "(eval: resize to size); resize: resize to size; none: keep the native size",
           choices=("resize_and_crop", "resize", "none")),
)


def split_folder(root: Path, split: str, suffix: str = "") -> Path:
    """root/train for training; root/<split>, then root/test, then root/val otherwise."""
    if not root.is_dir():
        list_images(root)  # raises the missing / not-a-folder error
    names = ["train"] if split == "train" else list(dict.fromkeys([split, "test", "val"]))
    tried = [root / f"{n}{suffix}" for n in names]
    for folder in tried:
        if folder.is_dir():
            return folder
    raise PbganError(f"no {split} data in {root}: tried {', '.join(str(t) for t in tried)}; "
                     f"put the images in one of these folders")


class Pipeline:
    """The reference pix2pix/CycleGAN preprocessing. Once per file (`load`, cached as uint8): PIL
    bicubic resize to the load size (training with resize_and_crop) or to the size (evaluation,
    `generate`, --preprocess resize). Per item (`__call__`): a random crop and horizontal flip when
    training, then ToTensor + Normalize to [-1, 1]. Randomness comes from torch's global RNG, so
    seeding makes runs reproducible."""

    def __init__(self, opts: Mapping[str, Any], train: bool):
        self.size = int(opts["size"])
        load = int(opts.get("load_size") or 0) or round(self.size * 286 / 256)
        mode = opts.get("preprocess", "resize_and_crop")
        self.crop = train and mode == "resize_and_crop"
        if self.crop and load < self.size:
            raise PbganError(f"--load-size {load} is smaller than the crop size {self.size}; "
                             f"use --load-size >= {self.size}")
        self.base = None if mode == "none" else (load if self.crop else self.size)
        self.flip = train and not opts.get("no_flip", False)

    def fit(self, halves: int = 1) -> tuple[int, int] | None:
        """The smallest (w, h) a file is resized to: lets very large files be reduced cheaply first."""
        return None if self.base is None else (self.base * halves, self.base)

    def resize(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 tensor (3, base, base)."""
        return pil_to_uint8(img if self.base is None else resize_bicubic(img, (self.base, self.base)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One shared crop/flip for all channels: A and B stacked on channels stay aligned."""
        if self.crop:
            h, w = x.shape[-2:]
            left = int(torch.randint(0, max(0, w - self.size) + 1, ()))
            top = int(torch.randint(0, max(0, h - self.size) + 1, ()))
            x = x[..., top: top + self.size, left: left + self.size]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return normalize(x)  # a new tensor: the cache is never handed out


class WrongLayout(Exception):
    """An image whose shape does not fit the dataset's layout (message: what was found)."""


class Images:
    """Validated images after `prepare(path)`: cached when they fit, else re-read per item."""

    def __init__(self, paths: list[Path], prepare: Callable[[Path], torch.Tensor],
                 opts: Mapping[str, Any], where: Path, layout: str = ""):
        self.prepare, self.paths, self.cache = prepare, [], []
        limit, used, skipped, wrong = int(opts.get("max_images") or 0), 0, [], []
        for p in paths:
            if limit and len(self.paths) >= limit:
                break
            try:
                x = prepare(p)
            except BadImage as e:
                skipped.append((e.path, e.reason))
                continue
            except WrongLayout as e:
                wrong.append(f"{p.name} ({e})")
                continue
            self.paths.append(p)
            used += x.numel() * x.element_size()
            if self.cache is not None:
                self.cache.append(x)
                if used > CACHE_BYTES:
                    self.cache = None
        warn_skipped(skipped)
        if wrong:
            more = f", and {len(wrong) - 10} more" if len(wrong) > 10 else ""
            raise PbganError(f"{len(wrong)} file(s) in {where} are not {layout}: {', '.join(wrong[:10])}{more}; "
                             f"fix or remove them, or pick a dataset type that fits (--dataset folder or unaligned)")
        if not self.paths:
            raise PbganError(f"no usable images in {where}: put .jpg/.png files there or point --data elsewhere")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[i]
        return self.prepare(self.paths[i])


def halves(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(A, B) of a side-by-side A|B image, of any width as in the reference."""
    if not is_pair(img):
        w, h = img.info.get("source_size", img.size)
        raise WrongLayout(f"{w}x{h}, too narrow to split into A and B halves")
    return split_pair(img)


class Prepare:
    """What is cached per file (uint8, resized): the whole image, one half of an A|B file, or both
    halves stacked on channels (`pair`: 6 channels, A then B). Each half is resized on its own, as
    the reference does. A class, not a closure, so datasets pickle for DataLoader workers."""

    def __init__(self, pipe: Pipeline, half: str = "none"):
        self.pipe, self.half = pipe, half

    def __call__(self, path: Path) -> torch.Tensor:
        img = open_rgb(path, self.pipe.fit(1 if self.half == "none" else 2))
        if self.half == "none":
            return self.pipe.resize(img)
        a, b = halves(img)
        if self.half == "pair":
            return torch.cat([self.pipe.resize(a), self.pipe.resize(b)])
        return self.pipe.resize(a if self.half == "A" else b)


# -----------------------------------------------------------------------------
# aligned: one file per pair, A left, B right


class PairedItems(Dataset):
    """Items from 6-channel (A then B) or 3-channel (A == B) images after the shared crop/flip."""

    def __init__(self, images: Images, pipe: Pipeline):
        self.images, self.pipe = images, pipe

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        x = self.pipe(self.images[i])
        b = x[3:] if x.shape[0] == 6 else x.clone()
        return {"A": x[:3], "B": b, "path": str(self.images.paths[i])}


class AlignedDataset(DatasetPlugin):
    name = "aligned"
    description = "pix2pix pairs, one file per pair: A left half, B right half (root/train, root/test or root/val)"
    options = COMMON

    def build(self, root: Path, split: str, opts: Mapping[str, Any], train: bool) -> Dataset:
        folder, pipe = split_folder(Path(root), split), Pipeline(opts, train)
        images = Images(list_images(folder), Prepare(pipe, "pair"), opts, folder, "side-by-side A|B pairs")
        return PairedItems(images, pipe)


# -----------------------------------------------------------------------------
# folder: a plain folder (or one file) of images, A == B; for generate and eval inputs


class FolderDataset(DatasetPlugin):
    name = "folder"
    description = "a plain folder of images (or a single image); A and B are the same image"
    options = COMMON

    def build(self, root: Path, split: str, opts: Mapping[str, Any], train: bool) -> Dataset:
        root, pipe = Path(root), Pipeline(opts, train)
        paths = [root] if root.is_file() else list_images(root)
        images = Images(paths, Prepare(pipe), opts, root)
        return PairedItems(images, pipe)


# -----------------------------------------------------------------------------
# derived: B is a photo, A a condition computed from it (edges, grayscale, blur, noise, ...)

DERIVED = ("edges", "grayscale", "blur", "noise", "pixelate", "dark", "negative")


def derive(photo: torch.Tensor, kind: str, index: int, blur_sigma: float = 2.0, noise_std: float = 0.2) -> torch.Tensor:
    """Condition image (3, H, W) in [-1, 1] computed from `photo` (3, H, W) in [-1, 1]."""
    x = (photo[None] + 1) / 2  # (1, 3, H, W) in [0, 1]
    if kind == "edges":  # dark lines on white
        _, edges = kornia.filters.canny(x)
        out = (1 - edges).expand(-1, 3, -1, -1)
    elif kind == "grayscale":
        out = kornia.color.rgb_to_grayscale(x).expand(-1, 3, -1, -1)
    elif kind == "blur":
        k = 2 * int(3 * blur_sigma + 0.5) + 1
        out = kornia.filters.gaussian_blur2d(x, (k, k), (blur_sigma, blur_sigma), border_type="reflect")
    elif kind == "noise":  # std in [-1, 1] units; same noise for the same image index every time
        g = torch.Generator().manual_seed(index)
        return (photo + noise_std * torch.randn(photo.shape, generator=g)).clamp(-1, 1)
    elif kind == "pixelate":  # 4x4 blocks
        h, w = x.shape[-2:]
        small = F.interpolate(x, (max(1, h // 4), max(1, w // 4)), mode="area")
        out = F.interpolate(small, (h, w), mode="nearest")
    elif kind == "dark":  # an underexposed photo
        out = kornia.enhance.adjust_gamma(x, gamma=2.0, gain=0.5)
    elif kind == "negative":
        out = kornia.enhance.invert(x)
    else:
        raise PbganError(f"unknown --derive {kind!r}; use one of {', '.join(DERIVED)}")
    return (out[0] * 2 - 1).contiguous()


def photo_paths(root: Path, split: str) -> list[Path]:
    """root/<split> when root has split folders; else every 10th image of root is held out for eval."""
    if any((root / n).is_dir() for n in ("train", "test", "val")):
        return list_images(split_folder(root, split))
    files = list_images(root)
    held = set(files[9::10]) or set(files[-1:])
    train = [f for f in files if f not in held] or files
    return train if split == "train" else [f for f in files if f in held]


class DerivedItems(Dataset):
    def __init__(self, images: Images, pipe: Pipeline, opts: Mapping[str, Any]):
        self.images, self.pipe = images, pipe
        self.kind = opts.get("derive", "edges")
        self.sigma, self.std = float(opts.get("blur_sigma", 2.0)), float(opts.get("noise_std", 0.2))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        photo = self.pipe(self.images[i])
        cond = derive(photo, self.kind, i, self.sigma, self.std)
        return {"A": cond, "B": photo, "path": str(self.images.paths[i])}


class DerivedDataset(DatasetPlugin):
    name = "derived"
    description = f"photos only: B is the photo, A a condition computed from it ({', '.join(DERIVED)})"
    options = COMMON + (
        Option("derive", "edges", "condition computed from each photo", choices=DERIVED),
        Option("blur-sigma", 2.0, "gaussian blur sigma in pixels, for --derive blur", above=0),
        Option("noise-std", 0.2, "gaussian noise std (images in [-1, 1]), for --derive noise", min=0),
        Option("half", "none", "photos are A|B files: use this half as the photo", choices=("none", "A", "B")),
    )

    def build(self, root: Path, split: str, opts: Mapping[str, Any], train: bool) -> Dataset:
        root, pipe, half = Path(root), Pipeline(opts, train), opts.get("half", "none")
        if opts.get("derive", "edges") not in DERIVED:
            derive(torch.zeros(3, 1, 1), opts["derive"], 0)  # raises the error
        paths = photo_paths(root, split)
        where = paths[0].parent if paths else root
        images = Images(paths, Prepare(pipe, half), opts, where, "side-by-side A|B pairs (--half)")
        return DerivedItems(images, pipe, opts)


# -----------------------------------------------------------------------------
# unaligned: root/trainA, trainB, testA, testB (CycleGAN)


class UnalignedItems(Dataset):
    def __init__(self, a: Images, b: Images, pipe: Pipeline, random_b: bool):
        self.a, self.b, self.pipe, self.random_b = a, b, pipe, random_b

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, i: int) -> dict:
        ia = i % len(self.a)
        ib = int(torch.randint(len(self.b), ())) if self.random_b else i % len(self.b)
        pa, pb = str(self.a.paths[ia]), str(self.b.paths[ib])
        return {"A": self.pipe(self.a[ia]), "B": self.pipe(self.b[ib]), "path_A": pa, "path_B": pb, "path": pa}


class UnalignedDataset(DatasetPlugin):
    name = "unaligned"
    description = "CycleGAN layout: unpaired root/trainA, trainB, testA, testB"
    options = COMMON + (
        Option("serial", False, "pair A[i] with B[i] instead of a random B when training"),
    )

    def build(self, root: Path, split: str, opts: Mapping[str, Any], train: bool) -> Dataset:
        root, pipe = Path(root), Pipeline(opts, train)
        sides = []
        for side in "AB":
            folder = split_folder(root, split, side)
            sides.append(Images(list_images(folder), Prepare(pipe), opts, folder))
        return UnalignedItems(*sides, pipe, random_b=train and not opts.get("serial", False))


@hookimpl
def register_datasets(register):
    register(AlignedDataset())
    register(FolderDataset())
    register(DerivedDataset())
    register(UnalignedDataset())
