"""Image loading matches the reference pix2pix/CycleGAN preprocessing pixel for pixel.

The reference steps, re-implemented here with PIL and numpy from its documented pipeline
(data/aligned_dataset.py, data/base_dataset.py get_params/get_transform, test options
load_size = crop_size): open -> convert('RGB') -> split A|B at int(w / 2) -> per half PIL
bicubic resize to load_size -> crop at (x, y) -> optional left-right flip -> ToTensor (/255)
-> Normalize(0.5, 0.5)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pbgan_plugins.datasets as ds
from pbgan_core.generate import load_condition
from pbgan_core.images import open_rgb
from tests.conftest import FACADES

SIZES = (64, 128, 256)


def reference_tensor(img: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    return a.sub(0.5).div(0.5)


def reference_halves(path: Path, load: int, crop: int, x: int, y: int, flip: bool):
    ab = Image.open(path).convert("RGB")
    w, h = ab.size
    w2 = int(w / 2)
    out = []
    for half in (ab.crop((0, 0, w2, h)), ab.crop((w2, 0, w, h))):
        img = half.resize((load, load), Image.BICUBIC)
        if load > crop:
            img = img.crop((x, y, x + crop, y + crop))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(reference_tensor(img))
    return out


def textured_pairs(folder: Path, n: int = 2, side: int = 300) -> Path:
    """A|B JPEGs of a size that is no multiple of the targets, with detail at every scale."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 256, (side // 10, side // 5, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((2 * side, side), Image.BILINEAR)
        noisy = np.clip(np.asarray(img).astype(int) + rng.integers(-40, 40, (side, 2 * side, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return folder.parent


def data_root(tmp_path: Path) -> Path:
    return FACADES if FACADES.is_dir() else textured_pairs(tmp_path / "pairs" / "train")


@pytest.mark.parametrize("size", SIZES)
def test_training_items_match_reference(tmp_path, size):
    root = data_root(tmp_path)
    data = ds.AlignedDataset().build(root, "train", {"size": size, "max_images": 2}, train=True)
    load = round(size * 286 / 256)
    for i in range(2):
        torch.manual_seed(10 + i)
        x = int(torch.randint(0, load - size + 1, ()))
        y = int(torch.randint(0, load - size + 1, ()))
        flip = bool(torch.rand(()) < 0.5)
        torch.manual_seed(10 + i)
        item = data[i]
        ref_a, ref_b = reference_halves(Path(item["path"]), load, size, x, y, flip)
        assert torch.equal(item["A"], ref_a) and torch.equal(item["B"], ref_b)


@pytest.mark.parametrize("size", SIZES)
def test_evaluation_and_generate_inputs_match_reference(tmp_path, size):
    root = data_root(tmp_path)
    split = "test" if (root / "test").is_dir() else "train"
    data = ds.AlignedDataset().build(root, split, {"size": size, "max_images": 2}, train=False)
    for i in range(2):
        path = Path(data[i]["path"])
        ref_a, ref_b = reference_halves(path, size, size, 0, 0, False)  # test.py: load_size = crop_size, no flip
        assert torch.equal(data[i]["A"], ref_a) and torch.equal(data[i]["B"], ref_b)
        assert torch.equal(load_condition(path, size, "BtoA", aligned=True), ref_b)
        assert torch.equal(load_condition(path, size, "AtoB", aligned=True), ref_a)


def test_flip_and_crop_really_vary(tmp_path):
    root = textured_pairs(tmp_path / "pairs" / "train", n=1, side=80)
    data = ds.AlignedDataset().build(root, "train", {"size": 64}, train=True)
    seen = {float(data[0]["A"].sum()) for _ in range(12)}
    assert len(seen) > 3


def test_large_jpeg_is_reduced_cheaply_and_stays_close(tmp_path):
    side = 2048
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((side, side), Image.BICUBIC).save(tmp_path / "big.jpg", quality=95)
    reduced = open_rgb(tmp_path / "big.jpg", (32, 32))
    assert 256 <= reduced.width <= 512 and reduced.info["source_size"] == (side, side)
    fast = load_condition(tmp_path / "big.jpg", 32, "AtoB", aligned=False)
    full = reference_tensor(Image.open(tmp_path / "big.jpg").convert("RGB").resize((32, 32), Image.BICUBIC))
    assert (fast - full).abs().mean() < 0.01
    # a PNG is decoded whole, then box-reduced before the bicubic resize
    Image.open(tmp_path / "big.jpg").save(tmp_path / "big.png")
    assert 256 <= open_rgb(tmp_path / "big.png", (32, 32)).width <= 512


def test_inputs_below_sixteen_times_the_target_are_not_reduced(tmp_path):
    Image.fromarray(np.zeros((510, 1020, 3), np.uint8)).save(tmp_path / "ab.jpg")
    assert open_rgb(tmp_path / "ab.jpg", (64, 32)).size == (1020, 510)


@pytest.mark.parametrize("width", [513, 600])
def test_pairs_whose_width_is_not_twice_the_height_split_as_the_reference(tmp_path, width):
    folder = tmp_path / "pairs" / "test"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(width)
    Image.fromarray(rng.integers(0, 256, (256, width, 3), dtype=np.uint8)).save(folder / "0.png")
    item = ds.AlignedDataset().build(tmp_path / "pairs", "test", {"size": 32}, train=False)[0]
    ref_a, ref_b = reference_halves(folder / "0.png", 32, 32, 0, 0, False)
    assert torch.equal(item["A"], ref_a) and torch.equal(item["B"], ref_b)
    assert torch.equal(load_condition(folder / "0.png", 32, "BtoA", aligned=True), ref_b)


def rgba_pair(path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (32, 64, 4), dtype=np.uint8), "RGBA").save(path.with_suffix(".png"))


def sixteen_bit_pair(path: Path) -> None:
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 65536, (32, 64), dtype=np.uint16)).save(path.with_suffix(".png"))


def exif_rotated_pair(path: Path) -> None:
    rng = np.random.default_rng(3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(path.with_suffix(".jpg"), exif=exif)


@pytest.mark.parametrize("make", [rgba_pair, sixteen_bit_pair, exif_rotated_pair])
def test_any_image_mode_loads_as_the_reference_converts_it(tmp_path, make):
    """Image.open(path).convert('RGB'): alpha dropped, 16-bit clipped, EXIF orientation ignored."""
    folder = tmp_path / "pairs" / "test"
    folder.mkdir(parents=True)
    make(folder / "0")
    path = next(folder.iterdir())
    item = ds.AlignedDataset().build(tmp_path / "pairs", "test", {"size": 16}, train=False)[0]
    ref_a, ref_b = reference_halves(path, 16, 16, 0, 0, False)
    assert torch.equal(item["A"], ref_a) and torch.equal(item["B"], ref_b)
    assert torch.equal(load_condition(path, 16, "AtoB", aligned=True), ref_a)
