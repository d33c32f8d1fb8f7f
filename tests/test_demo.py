"""`pbgan demo` end to end at a tiny size."""
import contextlib
import io
import json

import pytest
import torch

from pbgan_core.cli import main
from pbgan_core.demo import TASKS, DemoTask, baseline_scores, generated_photo, make_crops
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny demo run shared by the tests below: (output folder, printed text)."""
    import pbgan_core.demo as demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(demo, "PHOTOS", demo.PHOTOS[:2])  # 48 crops
        patch.setattr(demo, "OPTIONS", {**demo.OPTIONS, "ngf": 8, "ndf": 8})
        assert main(["demo", "--out", str(out), "--steps", "2", "--size", "32"]) == 0
    return out, printed.getvalue()


def test_demo_trains_the_tasks_in_order_without_forgetting(demo_run):
    out, printed = demo_run
    assert f"pbgan demo: {len(TASKS)} lifelong tasks" in printed and "forgot" in printed
    assert f"bit-identical to those recorded when each task was trained: {len(TASKS)} of {len(TASKS)}" in printed
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == [t.name for t in TASKS]
    assert all(t["options"]["upsample"] == "resize" for t in manifest["tasks"])
    final = manifest["stages"][-1]["metrics"]
    for task in manifest["tasks"]:
        assert final[task["name"]] == task["metrics"]  # zero forgetting
    for later in manifest["tasks"][1:]:
        assert later["params"]["stored"] < 0.4 * later["params"]["standalone"]


def test_demo_ends_with_the_report_and_the_follow_up_commands(demo_run, cli):
    out, printed = demo_run
    model = out / "model"
    report = model / "report" / "index.html"
    assert str(report) in printed and report.is_file()
    page = report.read_text()
    assert page.index("columns: condition | output | target") < page.index("after each task")  # samples first
    assert "zero forgetting" in page and "params.png" in page
    for command in ("tasks", "eval", "verify", "report"):
        assert f"pbgan {command} --model-dir {model}" in printed
    _, listed, _ = cli("tasks", "--json", "--model-dir", model)
    assert [t["name"] for t in json.loads(listed)["tasks"]] == [t.name for t in TASKS]
    _, verified, _ = cli("verify", "--model-dir", model)
    assert f"{len(TASKS)} task(s) verified" in verified


def test_demo_table_shows_each_trivial_baseline(demo_run):
    out, printed = demo_run
    store, plugins = ModelStore(out / "model"), get_plugins()
    for task in TASKS:
        base = baseline_scores(store, plugins, task)
        row = next(line for line in printed.splitlines() if line.strip("│┃ ").startswith(task.name))
        assert f"{base['psnr']:.1f}" in row and f"{base['ssim']:.2f}" in row


def test_baselines_are_the_condition_or_the_mean_photo(demo_run):
    out, _ = demo_run
    store, plugins = ModelStore(out / "model"), get_plugins()
    denoise = next(t for t in TASKS if t.baseline == "condition")
    test = plugins.datasets.get("derived").build(out / "photos", "test", store.task(denoise.name)["options"], False)
    a, b = torch.stack([test[i]["A"] for i in range(len(test))]), torch.stack([test[i]["B"] for i in range(len(test))])
    psnr = plugins.metrics.get("psnr").fn(a, b).mean()
    assert baseline_scores(store, plugins, denoise)["psnr"] == pytest.approx(float(psnr))
    as_mean = DemoTask(denoise.name, denoise.derive, denoise.what, "mean")
    assert baseline_scores(store, plugins, as_mean)["psnr"] < float(psnr)  # the mean photo is a worse answer


def test_generated_photos_stand_in_without_scikit_image(tmp_path, monkeypatch):
    import pbgan_core.demo as demo

    monkeypatch.setattr(demo, "builtin_photos", lambda: [])
    assert "generated" in make_crops(tmp_path, crop=32, per_photo=2)
    assert len(list((tmp_path / "train").iterdir())) == 8 and len(list((tmp_path / "test").iterdir())) == 8
    a, b = generated_photo(0, 32), generated_photo(1, 32)
    assert a.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1 and not a.equal(b)
