"""`pbgan demo` end to end at a tiny size."""
import json

from PIL import Image

from pbgan_core.demo import generated_photo, make_crops


def test_demo_trains_three_tasks_and_reports(cli, tmp_path):
    _, out, _ = cli("demo", "--out", tmp_path / "demo", "--steps", "2", "--size", "32")
    assert "pbgan demo: 3 lifelong tasks" in out and "forgot" in out
    manifest = json.loads((tmp_path / "demo" / "model" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["edges2photo", "gray2color", "blur2sharp"]
    final = manifest["stages"][-1]["metrics"]
    for task in manifest["tasks"]:
        assert final[task["name"]] == task["metrics"]  # zero forgetting
    tests = sorted(p.name for p in (tmp_path / "demo" / "photos" / "test").iterdir())
    for task in manifest["tasks"]:
        written = sorted((tmp_path / "demo" / "samples" / task["name"]).iterdir())
        assert [p.name for p in written] == tests
        with Image.open(written[0]) as grid:  # condition | output | photo
            assert grid.size == (3 * 32, 32)


def test_generated_photos_stand_in_without_scikit_image(tmp_path, monkeypatch):
    import pbgan_core.demo as demo

    monkeypatch.setattr(demo, "builtin_photos", lambda: [])
    assert "generated" in make_crops(tmp_path, crop=32, per_photo=2)
    assert len(list((tmp_path / "train").iterdir())) == 8 and len(list((tmp_path / "test").iterdir())) == 8
    a, b = generated_photo(0, 32), generated_photo(1, 32)
    assert a.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1 and not a.equal(b)
