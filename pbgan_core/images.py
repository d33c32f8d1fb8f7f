"""Image I/O: list a folder in natural order, read any image as a (3, H, W) tensor in [-1, 1],
load images for a model the way the reference pix2pix/CycleGAN code does (PIL's convert('RGB'),
bicubic resize), write PNGs atomically, and report unreadable files in one warning."""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import kornia.image
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_write_bytes
from .errors import PbganError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


class BadImage(PbganError):
    """A file that cannot be decoded as an image (truncated, corrupt, not an image)."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot read image {path}: {reason}")


class BadImageWarning(UserWarning):
    """Some images in a dataset could not be read and were skipped."""


def natural_key(name: str) -> list:
    """Sort key that orders the numbers inside a name by value: "2.jpg" before "10.jpg"."""
    parts = re.split(r"(\d+)", name)  # text, number, text, ...: same kinds at same positions
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)] + [name]


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder` (by extension), in natural order. Hidden files are ignored."""
    folder = Path(folder)
    if not folder.exists():
        raise PbganError(f"data folder {folder} does not exist: check the path given to --data")
    if not folder.is_dir():
        raise PbganError(f"data folder {folder} is not a folder: point --data at a folder of images")
    files = [p for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


# -----------------------------------------------------------------------------
# reading

def _to_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 array (H, W, 3) in [0, 1]."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit (or 32-bit int) grayscale
        a = np.asarray(img).astype(np.float32) / 65535.0
        return np.repeat(np.clip(a, 0.0, 1.0)[..., None], 3, axis=2)
    if img.mode == "F":  # float grayscale: PIL's own convention is 0..255
        a = np.asarray(img).astype(np.float32) / 255.0
        return np.repeat(np.clip(np.nan_to_num(a), 0.0, 1.0)[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):  # composite on white
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, RGBX, ...
    return np.asarray(img).astype(np.float32) / 255.0


def _decode(path: Path, convert: Callable[[Image.Image], Any], fit: tuple[int, int] | None = None) -> Any:
    """Open and fully decode an image (truncation shows up here, not later), then `convert` it.
    With `fit`, a far larger JPEG is decoded at a reduced scale (see REDUCE_ABOVE). Raises BadImage."""
    try:
        with Image.open(path) as img:
            source = img.size
            if fit is not None:
                _draft(img, fit)
            img.load()
            out = convert(img)
            if isinstance(out, Image.Image):
                out.info["source_size"] = source  # (w, h) before any reduction
            return out
    except UnidentifiedImageError:
        raise BadImage(path, "not an image") from None
    except Image.DecompressionBombError:
        raise BadImage(path, "too large (decompression bomb guard)") from None
    except FileNotFoundError:
        raise BadImage(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        raise BadImage(path, "truncated" if "truncated" in msg.lower() else msg) from None


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image fully and return a float tensor (3, H, W) in [-1, 1], turned by its EXIF
    orientation, alpha composited on white, 16-bit scaled. Raises BadImage."""
    path = Path(path)
    array = _decode(path, lambda img: _to_array(ImageOps.exif_transpose(img)))
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise BadImage(path, "empty image")
    return _array_to_tensor(array)


def from_pil(img: Image.Image) -> torch.Tensor:
    """A PIL image of any mode -> float tensor (3, H, W) in [-1, 1], as `read_image` decodes files."""
    return _array_to_tensor(_to_array(ImageOps.exif_transpose(img)))


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    x = kornia.image.image_to_tensor(np.ascontiguousarray(array), keepdim=True)  # (3, H, W)
    return x * 2.0 - 1.0


# -----------------------------------------------------------------------------
# loading for a model, as the reference code does: 8-bit RGB, PIL bicubic resize, then
# ToTensor (/255) and Normalize(0.5, 0.5)

# An image more than REDUCE_ABOVE times larger than its target size in both directions is first
# reduced (JPEG: decoded at 1/2, 1/4 or 1/8 scale; others: Image.reduce) to at least REDUCE_TO times
# the target, so memory stays bounded; below that, loading is the reference's pixel for pixel.
REDUCE_ABOVE = 16
REDUCE_TO = 8


def _draft(img: Image.Image, fit: tuple[int, int]) -> None:
    """Ask the JPEG decoder for a power-of-two reduced decode when the image is far too large."""
    if img.format != "JPEG":
        return
    fw, fh = fit
    if min(img.width // max(fw, 1), img.height // max(fh, 1)) >= REDUCE_ABOVE:
        img.draft(None, (fw * REDUCE_TO, fh * REDUCE_TO))


def reduce_large(img: Image.Image, fit: tuple[int, int]) -> Image.Image:
    """Box-reduce by an integer factor when `img` is over REDUCE_ABOVE times `fit` (w, h)."""
    fw, fh = max(fit[0], 1), max(fit[1], 1)
    if min(img.width // fw, img.height // fh) < REDUCE_ABOVE:
        return img
    factor = min(img.width // (fw * REDUCE_TO), img.height // (fh * REDUCE_TO))
    return img.reduce(factor) if factor >= 2 else img


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB exactly as the reference's Image.convert('RGB'): alpha dropped,
    16-bit and float values clipped to 0..255, no EXIF rotation."""
    return img if img.mode == "RGB" else img.convert("RGB")


def open_rgb(path: str | Path, fit: tuple[int, int] | None = None) -> Image.Image:
    """An image as 8-bit RGB PIL image; with `fit` (the smallest (w, h) it will be resized to),
    very large images come back reduced. Raises BadImage."""
    path = Path(path)
    img = _decode(path, lambda im: to_rgb8(im) if fit is None else reduce_large(to_rgb8(im), fit), fit)
    if img.width < 1 or img.height < 1:
        raise BadImage(path, "empty image")
    return img


def resize_bicubic(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """PIL bicubic resize to (w, h), as the reference's transforms.Resize on PIL images."""
    return img if img.size == tuple(size) else img.resize(tuple(size), Image.BICUBIC)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> uint8 tensor (3, H, W)."""
    return kornia.image.image_to_tensor(np.array(img), keepdim=True).contiguous()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (…, H, W) -> float in [-1, 1], the same float operations as ToTensor + Normalize(0.5, 0.5)."""
    return (x.float() / 255 - 0.5) / 0.5


def is_pair(img: Image.Image) -> bool:
    """Whether the file behind `img` (from open_rgb) can be split into A|B: at least 2 pixels wide."""
    return img.info.get("source_size", img.size)[0] >= 2


def split_pair(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(A, B) halves of a side-by-side A|B image of any width, split as the reference splits them:
    A the left int(w / 2) columns, B the rest."""
    half = img.width // 2
    return img.crop((0, 0, half, img.height)), img.crop((half, 0, img.width, img.height))


def load_usable(paths: Iterable[Path]) -> tuple[list[tuple[Path, torch.Tensor]], list[tuple[Path, str]]]:
    """Read every path; return the readable ones with their tensors and the skipped ones with a reason."""
    usable, skipped = [], []
    for p in paths:
        try:
            usable.append((Path(p), read_image(p)))
        except BadImage as e:
            skipped.append((e.path, e.reason))
    return usable, skipped


def skipped_message(skipped: list[tuple[Path, str]], limit: int = 10) -> str:
    paths = [Path(p) for p, _ in skipped]
    folders = {p.parent for p in paths}
    where = f" in {next(iter(folders))}" if len(folders) == 1 else ""
    names = [f"{p.name if where else p} ({reason})" for p, (_, reason) in zip(paths, skipped)]
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    noun = "image" if len(skipped) == 1 else "images"
    return f"skipped {len(skipped)} unreadable {noun}{where}: {', '.join(names[:limit])}{more}"


def warn_skipped(skipped: list[tuple[Path, str]], stacklevel: int = 2) -> None:
    """One BadImageWarning naming every skipped file (nothing if none)."""
    if skipped:
        warnings.warn(skipped_message(skipped), BadImageWarning, stacklevel=stacklevel + 1)


# -----------------------------------------------------------------------------
# writing

def to_pil(x: torch.Tensor) -> Image.Image:
    """Tensor (3, H, W) or (1, H, W) in [-1, 1] -> 8-bit RGB PIL image."""
    x = x.detach().to("cpu", torch.float32)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor (3, H, W) or (1, H, W), got shape {tuple(x.shape)}")
    x = torch.nan_to_num(x, nan=0.0).clamp(-1, 1).expand(3, -1, -1)
    x = ((x + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(kornia.image.tensor_to_image(x)))


def write_image(x: torch.Tensor | Image.Image, path: str | Path, overwrite: bool = True) -> Path:
    """Save as PNG: same tensor -> same bytes; written to a temp file then renamed into place
    (with overwrite=False an existing file is never replaced)."""
    path = Path(path)
    buf = io.BytesIO()
    image = x if isinstance(x, Image.Image) else to_pil(x)
    image.save(buf, format="PNG", optimize=False, compress_level=6)  # no metadata: deterministic
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)
    return path
