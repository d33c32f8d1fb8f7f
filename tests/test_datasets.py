"""Dataset plugins (aligned, folder, derived, unaligned) and the known public datasets."""
import io
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pbgan_plugins.datasets as ds
import pbgan_plugins.known_data as kd
from pbgan_core.errors import PbganError
from pbgan_core.images import BadImageWarning, read_image
from pbgan_core.options import parse_extra_args

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "facades").is_dir(), reason="../shared/data not present")


def opts(size=32, **kw):
    return {"size": size, "direction": "AtoB", **kw}


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def solid(h, w, rgb):
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def texture(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pair(path, left, right):
    return save(path, np.concatenate([left, right], axis=1))


# -----------------------------------------------------------------------------
# registration and options


def test_register_and_options():
    plugins = []
    ds.register_datasets(plugins.append)
    assert [p.name for p in plugins] == ["aligned", "folder", "derived", "unaligned"]
    for p in plugins:
        flags = {o.flag for o in p.options}
        assert {"load-size", "no-flip", "max-images", "preprocess"} <= flags, p.name
    derived = next(p for p in plugins if p.name == "derived")
    parsed = parse_extra_args(["--derive", "blur", "--blur-sigma", "3", "--no-flip", "--half", "B"],
                              derived.options, "derived")
    assert parsed == {"derive": "blur", "blur_sigma": 3.0, "no_flip": True, "half": "B"}


# -----------------------------------------------------------------------------
# aligned


def test_aligned_halves_red_blue(tmp_path):
    for i in range(3):
        pair(tmp_path / "train" / f"{i}.png", solid(20, 20, (255, 0, 0)), solid(20, 20, (0, 0, 255)))
    for train in (True, False):
        d = ds.AlignedDataset().build(tmp_path, "train", opts(16), train)
        item = d[0]
        assert set(item) == {"A", "B", "path"} and item["A"].shape == item["B"].shape == (3, 16, 16)
        assert torch.allclose(item["A"], torch.tensor([1.0, -1, -1])[:, None, None].expand(3, 16, 16), atol=1e-5)
        assert torch.allclose(item["B"], torch.tensor([-1.0, -1, 1])[:, None, None].expand(3, 16, 16), atol=1e-5)


def test_aligned_same_crop_and_flip(tmp_path):
    for i in range(2):
        t = texture(40, 40, seed=i)
        pair(tmp_path / "train" / f"{i}.png", t, t)  # A == B content
    d = ds.AlignedDataset().build(tmp_path, "train", opts(24, load_size=40), True)
    seen = set()
    for k in range(12):
        item = d[k % 2]
        assert torch.equal(item["A"], item["B"])
        seen.add(item["A"].sum().item())
    assert len(seen) > 2  # crops and flips really vary


def test_aligned_seeded_and_eval_deterministic(tmp_path):
    for i in range(2):
        pair(tmp_path / "train" / f"{i}.png", texture(40, 40, i), texture(40, 40, i + 10))
    d = ds.AlignedDataset().build(tmp_path, "train", opts(24, load_size=40), True)
    torch.manual_seed(5)
    a = [d[i]["A"] for i in range(2)]
    torch.manual_seed(5)
    b = [d[i]["A"] for i in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    e = ds.AlignedDataset().build(tmp_path, "train", opts(24), False)
    assert torch.equal(e[1]["B"], e[1]["B"]) and e[1]["B"].shape == (3, 24, 24)


def test_aligned_preprocess_modes(tmp_path):
    pair(tmp_path / "train" / "0.png", texture(40, 40), texture(40, 40, 1))
    assert ds.AlignedDataset().build(tmp_path, "train", opts(16, preprocess="resize"), True)[0]["A"].shape == (3, 16, 16)
    assert ds.AlignedDataset().build(tmp_path, "train", opts(16, preprocess="none"), True)[0]["A"].shape == (3, 40, 40)
    with pytest.raises(PbganError, match="load-size"):
        ds.AlignedDataset().build(tmp_path, "train", opts(32, load_size=20), True)


def test_aligned_lazy_equals_cached(tmp_path, monkeypatch):
    for i in range(3):
        pair(tmp_path / "test" / f"{i}.png", texture(30, 30, i), texture(30, 30, i + 5))
    cached = ds.AlignedDataset().build(tmp_path, "test", opts(16), False)
    monkeypatch.setattr(ds, "CACHE_BYTES", 0)
    lazy = ds.AlignedDataset().build(tmp_path, "test", opts(16), False)
    assert cached.images.cache is not None and lazy.images.cache is None
    assert all(torch.equal(cached[i]["B"], lazy[i]["B"]) for i in range(3))


def test_aligned_skips_unreadable_with_one_warning(tmp_path):
    for i in (1, 2, 10):
        pair(tmp_path / "train" / f"{i}.png", texture(16, 16, i), texture(16, 16, i))
    buf = io.BytesIO()
    Image.fromarray(np.concatenate([texture(64, 64), texture(64, 64)], 1)).save(buf, "JPEG")
    (tmp_path / "train" / "3.jpg").write_bytes(buf.getvalue()[:400])
    (tmp_path / "train" / "4.jpg").write_text("not really a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = ds.AlignedDataset().build(tmp_path, "train", opts(16), True)
    assert [Path(p).name for p in d.images.paths] == ["1.png", "2.png", "10.png"]
    bad = [w for w in caught if issubclass(w.category, BadImageWarning)]
    assert len(bad) == 1
    assert "skipped 2 unreadable images" in str(bad[0].message)
    assert "3.jpg (truncated)" in str(bad[0].message) and "4.jpg (not an image)" in str(bad[0].message)


def test_aligned_wrong_layout_names_file(tmp_path):
    pair(tmp_path / "train" / "1.png", texture(16, 16), texture(16, 16))
    save(tmp_path / "train" / "2.png", texture(16, 1))  # one column: no A|B halves
    with pytest.raises(PbganError, match=r"2\.png \(1x16, too narrow") as e:
        ds.AlignedDataset().build(tmp_path, "train", opts(16), True)
    assert "1.png" not in str(e.value) and "\n" not in str(e.value)


def test_aligned_folder_errors(tmp_path):
    with pytest.raises(PbganError, match="does not exist"):
        ds.AlignedDataset().build(tmp_path / "missing", "train", opts(), True)
    (tmp_path / "train").mkdir()
    with pytest.raises(PbganError, match="no usable images"):
        ds.AlignedDataset().build(tmp_path, "train", opts(), True)
    with pytest.raises(PbganError, match="tried .*test.*val"):
        ds.AlignedDataset().build(tmp_path, "test", opts(), False)


def test_aligned_tiny_image(tmp_path):
    save(tmp_path / "train" / "0.png", np.concatenate([solid(1, 1, (255, 255, 255)), solid(1, 1, (0, 0, 0))], 1))
    item = ds.AlignedDataset().build(tmp_path, "train", opts(8), True)[0]
    assert item["A"].shape == (3, 8, 8) and item["A"].min() > 0.99 and item["B"].max() < -0.99


@needs_data
def test_aligned_real_facades_order_and_halves():
    d = ds.AlignedDataset().build(DATA / "facades", "train", opts(32, max_images=4), False)
    assert len(d) == 4 and [Path(p).name for p in d.images.paths] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    item = d[0]
    assert item["A"].shape == (3, 32, 32)
    ref = read_image(DATA / "facades" / "train" / "1.jpg")
    photo = Image.open(DATA / "facades" / "train" / "1.jpg").crop((0, 0, 256, 256)).resize((32, 32), Image.BICUBIC)
    assert torch.allclose(item["A"], torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    # the label map (B) is made of a few flat colours, the photo (A) is not
    def colours(x):
        return len(torch.unique((ref[:, :, x] * 127.5).round().reshape(3, -1), dim=1).T)
    assert colours(slice(256, None)) < colours(slice(0, 256))


@needs_data
def test_aligned_real_shoes_val_split_train_crop():
    d = ds.AlignedDataset().build(DATA / "edges2shoes", "test", opts(32, max_images=2), False)
    assert Path(d.images.paths[0]).parent.name == "val"
    t = ds.AlignedDataset().build(DATA / "edges2shoes", "train", opts(32, max_images=2), True)
    assert t[1]["B"].shape == (3, 32, 32) and t.images[0].shape == (6, 36, 36)  # cached at load size


# -----------------------------------------------------------------------------
# folder


def test_folder_dataset(tmp_path):
    for i in (3, 1, 2):
        save(tmp_path / f"{i}.png", texture(20, 30, i))
    d = ds.FolderDataset().build(tmp_path, "test", opts(16), False)
    assert [Path(p).name for p in d.images.paths] == ["1.png", "2.png", "3.png"]
    item = d[0]
    assert item["A"].shape == (3, 16, 16) and torch.equal(item["A"], item["B"])
    single = ds.FolderDataset().build(tmp_path / "2.png", "test", opts(16), False)
    assert len(single) == 1 and single[0]["path"].endswith("2.png")


# -----------------------------------------------------------------------------
# derived


def photos(folder, n, size=32):
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 0] = 40 + 160 * ((xx // 8 + yy // 8 + i) % 2)  # checkerboard: strong edges
        img[..., 1] = (xx * 255 // size).astype(np.uint8)
        img[..., 2] = 90
        save(folder / f"{i}.png", img)


def test_derived_grayscale_blur_noise(tmp_path):
    photos(tmp_path, 3)
    gray = ds.DerivedDataset().build(tmp_path, "train", opts(32, derive="grayscale"), False)[0]
    assert torch.allclose(gray["A"][0], gray["A"][1]) and torch.allclose(gray["A"][1], gray["A"][2])
    assert not torch.allclose(gray["B"][0], gray["B"][1])

    def hf(x):  # high-frequency energy: squared neighbour differences
        return (x[:, 1:] - x[:, :-1]).pow(2).sum() + (x[:, :, 1:] - x[:, :, :-1]).pow(2).sum()

    blur = ds.DerivedDataset().build(tmp_path, "train", opts(32, derive="blur", blur_sigma=2.0), False)[0]
    assert hf(blur["A"]) < 0.5 * hf(blur["B"])
    noisy = ds.DerivedDataset().build(tmp_path, "train", opts(32, derive="noise"), False)
    a, b = noisy[1]["A"], noisy[1]["A"]
    assert torch.equal(a, b) and not torch.equal(a, noisy[1]["B"]) and a.abs().max() <= 1
    assert not torch.equal(a - noisy[1]["B"], noisy[0]["A"] - noisy[0]["B"])


def test_derived_pixelate_dark_negative(tmp_path):
    photos(tmp_path, 1)
    item = {k: ds.DerivedDataset().build(tmp_path, "train", opts(32, derive=k), False)[0]
            for k in ("pixelate", "dark", "negative")}
    blocks = item["pixelate"]["A"]
    assert torch.equal(blocks, blocks[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2))  # 4x4 blocks
    assert not torch.equal(blocks, item["pixelate"]["B"])
    photo = item["dark"]["B"]
    assert (item["dark"]["A"] <= photo + 1e-6).all() and item["dark"]["A"].mean() < photo.mean() - 0.3
    assert torch.allclose(item["negative"]["A"], -photo, atol=1e-6)


def test_derived_edges_dark_lines_on_white(tmp_path):
    photos(tmp_path, 2, size=64)
    item = ds.DerivedDataset().build(tmp_path, "train", opts(64), False)[0]  # default: edges
    a = item["A"]
    assert a.shape == (3, 64, 64) and torch.equal(a[0], a[1])
    white, dark = (a > 0.9).float().mean(), (a < -0.9).float().mean()
    assert white > 0.6 and 0.02 < dark < 0.4


def test_derived_split_and_half(tmp_path):
    photos(tmp_path / "flat", 12, size=16)
    train = ds.DerivedDataset().build(tmp_path / "flat", "train", opts(16), True)
    test = ds.DerivedDataset().build(tmp_path / "flat", "test", opts(16), False)
    assert len(train) == 11 and [Path(p).name for p in test.images.paths] == ["9.png"]
    pair(tmp_path / "ab" / "train" / "0.png", solid(16, 16, (255, 0, 0)), solid(16, 16, (0, 0, 255)))
    item = ds.DerivedDataset().build(tmp_path / "ab", "train", opts(16, half="B", derive="grayscale"), True)[0]
    assert torch.allclose(item["B"][2], torch.ones(16, 16), atol=1e-5)
    photos(tmp_path / "narrow", 2, size=16)
    for p in (tmp_path / "narrow").iterdir():
        Image.open(p).crop((0, 0, 1, 16)).save(p)
    with pytest.raises(PbganError, match="not side-by-side"):
        ds.DerivedDataset().build(tmp_path / "narrow", "train", opts(16, half="A"), True)


@needs_data
def test_derived_real_shoes_photo_half():
    d = ds.DerivedDataset().build(DATA / "edges2shoes", "val", opts(32, half="A", max_images=2), False)
    item = d[0]
    assert item["A"].shape == item["B"].shape == (3, 32, 32)
    assert (item["A"] > 0.9).float().mean() > 0.5


# -----------------------------------------------------------------------------
# unaligned


def test_unaligned(tmp_path):
    for side, n in (("A", 3), ("B", 5)):
        for i in range(n):
            save(tmp_path / f"train{side}" / f"{i}.png", texture(20, 20, i))
            save(tmp_path / f"test{side}" / f"{i}.png", texture(20, 20, i))
    d = ds.UnalignedDataset().build(tmp_path, "train", opts(16), True)
    assert len(d) == 5
    item = d[4]
    assert set(item) == {"A", "B", "path_A", "path_B", "path"}
    assert Path(item["path_A"]).name == "1.png" and item["path"] == item["path_A"]
    torch.manual_seed(0)
    picks = [Path(d[0]["path_B"]).name for _ in range(20)]
    torch.manual_seed(0)
    assert picks == [Path(d[0]["path_B"]).name for _ in range(20)] and len(set(picks)) > 1
    serial = ds.UnalignedDataset().build(tmp_path, "train", opts(16, serial=True), True)
    assert [Path(serial[i]["path_B"]).name for i in range(5)] == [f"{i}.png" for i in range(5)]
    ev = ds.UnalignedDataset().build(tmp_path, "test", opts(16), False)
    assert Path(ev[3]["path_B"]).name == "3.png" and Path(ev[3]["path_A"]).name == "0.png"
    with pytest.raises(PbganError, match="testA.*valA"):
        ds.UnalignedDataset().build(tmp_path / "trainA", "test", opts(16), False)


# -----------------------------------------------------------------------------
# known datasets and download


def test_known_directions_and_layouts():
    assert kd.known("facades").direction == "BtoA" and kd.known("facades").layout == "aligned"
    assert kd.known("cityscapes").direction == "BtoA"
    for name in ("edges2shoes", "edges2handbags", "maps", "night2day"):
        assert kd.known(name).direction == "AtoB" and kd.known(name).layout == "aligned"
    assert kd.known("edges2shoes").url == "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/edges2shoes.tar.gz"
    h2z = kd.known("horse2zebra")
    assert (h2z.layout, h2z.direction) == ("unaligned", "AtoB")
    assert h2z.url == "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"
    assert kd.known("cyclegan-maps").url.endswith("/cyclegan/datasets/maps.zip")
    assert kd.known("nope") is None


def test_data_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PBGAN_DATA_HOME", str(tmp_path / "d"))
    assert kd.data_home() == tmp_path / "d" and kd.default_data_dir("facades") == tmp_path / "d" / "facades"
    monkeypatch.delenv("PBGAN_DATA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kd.data_home() == tmp_path / "cache" / "pbgan" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kd.data_home() == Path.home() / ".cache" / "pbgan" / "data"


def test_download_unknown_and_offline(monkeypatch, tmp_path):
    with pytest.raises(PbganError, match="unknown dataset 'nope'.*edges2shoes.*horse2zebra"):
        kd.download("nope", home=tmp_path)

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(kd.urllib.request, "urlopen", offline)
    with pytest.raises(PbganError) as e:
        kd.download("facades", home=tmp_path, progress=False)
    msg = str(e.value)
    assert msg.startswith("could not download facades from http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/")
    assert "no network" in msg and "--data" in msg and str(tmp_path / "facades") in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


class FakeResponse(io.BytesIO):
    def __init__(self, data, length=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


def tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_extracts_and_checks(monkeypatch, tmp_path):
    png = io.BytesIO()
    Image.fromarray(solid(4, 8, (1, 2, 3))).save(png, "PNG")
    good = tar_bytes({"facades/train/1.png": png.getvalue(), "facades/val/1.png": png.getvalue()})
    monkeypatch.setattr(kd.urllib.request, "urlopen", lambda *a, **k: FakeResponse(good))
    out = kd.download("facades", home=tmp_path, progress=False)
    assert out == tmp_path / "facades" and (out / "train" / "1.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facades"]  # temp files cleaned up
    monkeypatch.setattr(kd.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    assert kd.download("facades", home=tmp_path) == out  # already there: no download

    monkeypatch.setattr(kd.urllib.request, "urlopen", lambda *a, **k: FakeResponse(good, len(good) + 10))
    with pytest.raises(PbganError, match="incomplete"):
        kd.download("maps", home=tmp_path, progress=False)
    evil = tar_bytes({"../evil.txt": b"x"})
    monkeypatch.setattr(kd.urllib.request, "urlopen", lambda *a, **k: FakeResponse(evil))
    with pytest.raises(PbganError, match="unsafe"):
        kd.download("night2day", home=tmp_path, progress=False)
    monkeypatch.setattr(kd.urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"garbage" * 10))
    with pytest.raises(PbganError, match="damaged"):
        kd.download("edges2shoes", home=tmp_path, progress=False)
    assert not (tmp_path.parent / "evil.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facades"]
