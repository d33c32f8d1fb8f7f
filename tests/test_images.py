"""Image I/O: natural order, decoding any mode to (3, H, W) in [-1, 1], bad files, atomic PNG writes."""
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pbgan_core.errors import PbganError
from pbgan_core.images import (
    BadImage,
    BadImageWarning,
    list_images,
    load_usable,
    read_image,
    warn_skipped,
    write_image,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "facades").is_dir(), reason="../shared/data not present")


def save(path, array, mode=None, **kw):
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path, **kw)
    return path


def solid(h, w, rgb):
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


# -----------------------------------------------------------------------------
# listing


def test_list_images_natural_order_and_filters(tmp_path):
    for name in ["10.jpg", "2.jpg", "1.png", "b3_AB.jpg", "b20_AB.jpg", "b100_AB.JPG", "notes.txt", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["1.png", "2.jpg", "10.jpg", "b3_AB.jpg", "b20_AB.jpg", "b100_AB.JPG"]


@needs_data
def test_list_images_real_data_numeric():
    names = [p.name for p in list_images(DATA / "facades" / "test")][:12]
    assert names == [f"{i}.jpg" for i in range(1, 13)]
    shoes = [p.name for p in list_images(DATA / "edges2shoes" / "val")][:3]
    assert [int(n.split("_")[0]) for n in shoes] == sorted(int(n.split("_")[0]) for n in shoes)


def test_list_images_missing_and_not_a_folder(tmp_path):
    with pytest.raises(PbganError, match="does not exist"):
        list_images(tmp_path / "nope")
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(PbganError, match="not a folder"):
        list_images(f)


# -----------------------------------------------------------------------------
# reading


@needs_data
def test_read_real_jpeg():
    x = read_image(DATA / "facades" / "train" / "1.jpg")
    assert x.shape == (3, 256, 512) and x.dtype == torch.float32
    assert -1 <= x.min() < x.max() <= 1


def test_read_rgb_values(tmp_path):
    x = read_image(save(tmp_path / "a.png", solid(4, 6, (255, 0, 128))))
    assert x.shape == (3, 4, 6)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_read_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red
    a[:, :2, 3] = 255  # left opaque, right fully transparent
    x = read_image(save(tmp_path / "a.png", a))
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(x[:, 0, 3], torch.ones(3))


def test_read_grayscale_la_palette_cmyk_bilevel(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    for mode in ["L", "LA", "P", "CMYK", "1"]:
        path = tmp_path / f"g_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        x = read_image(save(path, gray, mode))
        assert x.shape == (3, 4, 16), mode
        assert torch.allclose(x[0], x[1], atol=0.05) and torch.allclose(x[1], x[2], atol=0.05), mode
    x = read_image(tmp_path / "g_L.png")
    assert torch.allclose(x[0, 0], torch.from_numpy(gray[0]).float() / 127.5 - 1)


def test_read_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "p.png", transparency=0)
    x = read_image(tmp_path / "p.png")
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(x[:, 3, 3], torch.ones(3))  # transparent -> white


def test_read_16bit_scaled(tmp_path):
    a = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    x = read_image(tmp_path / "d.png")
    assert x.shape == (3, 1, 3)
    assert torch.allclose(x[0, 0], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4)


def test_read_tiny(tmp_path):
    x = read_image(save(tmp_path / "t.png", solid(1, 1, (0, 255, 0))))
    assert x.shape == (3, 1, 1)


def make_truncated_jpeg(path, size=64):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_bad_images(tmp_path):
    with pytest.raises(BadImage, match="truncated") as e:
        read_image(make_truncated_jpeg(tmp_path / "cut.jpg"))
    assert e.value.path.name == "cut.jpg" and isinstance(e.value, PbganError)
    (tmp_path / "text.jpg").write_text("hello, not a picture")
    with pytest.raises(BadImage, match="not an image"):
        read_image(tmp_path / "text.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImage, match="empty.png"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(BadImage, match="not found"):
        read_image(tmp_path / "missing.png")


def test_load_usable_and_one_warning(tmp_path):
    good = save(tmp_path / "1.png", solid(4, 4, (1, 2, 3)))
    cut = make_truncated_jpeg(tmp_path / "2.jpg")
    text = tmp_path / "3.jpg"
    text.write_text("nope")
    usable, skipped = load_usable(list_images(tmp_path))
    assert [p for p, _ in usable] == [good] and usable[0][1].shape == (3, 4, 4)
    assert [(p.name, r) for p, r in skipped] == [("2.jpg", "truncated"), ("3.jpg", "not an image")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_skipped(skipped)
        warn_skipped([])
    assert len(caught) == 1 and caught[0].category is BadImageWarning
    msg = str(caught[0].message)
    assert msg.startswith(f"skipped 2 unreadable images in {tmp_path}")
    assert "2.jpg (truncated)" in msg and "3.jpg (not an image)" in msg
    assert cut.exists()


# -----------------------------------------------------------------------------
# writing


def test_write_roundtrip_deterministic_atomic(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(3, 8, 10) * 2 - 1
    a, b = write_image(x, tmp_path / "out" / "a.png"), write_image(x.clone(), tmp_path / "out" / "b.png")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]  # no temp files left
    y = read_image(a)
    assert (y - x).abs().max() <= 1 / 127.5 + 1e-6
    write_image(-x, a)  # replaces in place
    assert torch.allclose(read_image(a), -y, atol=1 / 127.5 + 1e-6)


def test_write_clamps_and_accepts_gray(tmp_path):
    x = torch.tensor([[[-5.0, 5.0, float("nan")]]])  # (1, 1, 3)
    y = read_image(write_image(x, tmp_path / "g.png"))
    assert y.shape == (3, 1, 3)
    assert torch.allclose(y[:, 0, 0], -torch.ones(3)) and torch.allclose(y[:, 0, 1], torch.ones(3))
    with pytest.raises(ValueError):
        write_image(torch.zeros(1, 3, 4, 4), tmp_path / "bad.png")


@pytest.mark.parametrize("kind", ["pipe", "link", "folder"])
def test_write_replaces_only_a_regular_file(tmp_path, kind):
    target = tmp_path / "x.png"
    if kind == "pipe":
        os.mkfifo(target)
    elif kind == "link":
        target.symlink_to(write_image(torch.zeros(3, 2, 2), tmp_path / "kept.png"))
    else:
        target.mkdir()
    with pytest.raises(PbganError, match="x.png exists and is not a regular file"):
        write_image(torch.zeros(3, 2, 2), target)
    assert target.is_symlink() if kind == "link" else not target.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"x.png", "kept.png"} if kind == "link" else {"x.png"})
