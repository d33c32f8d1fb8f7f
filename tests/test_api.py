"""The Python API: a script using only it trains two tasks, switches between them and writes
exactly the bytes `pbgan generate` writes."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pbgan
from pbgan_core.errors import PbganError
from pbgan_core.layers import FilterConv
from pbgan_core.taskcache import TaskCache, module_bytes

from .conftest import EDGES2SHOES, FACADES, needs_data, one_line_error

TINY = dict(size=32, ngf=8, ndf=8, max_images=24, eval_images=4, device="cpu", steps=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if not (FACADES.exists() and EDGES2SHOES.exists()):
        pytest.skip("shared data not available")
    root = tmp_path_factory.mktemp("api") / "m"
    calls = []
    first = pbgan.train("pix2pix", "facades", FACADES, model_dir=root, direction="BtoA",
                        progress=lambda step, total, losses: calls.append((step, total, dict(losses))), **TINY)
    assert [c[0] for c in calls] == [1, 2, 3] and all(c[1] == 3 for c in calls)
    assert calls[-1][2] and all(torch.isfinite(torch.tensor(v)) for v in calls[-1][2].values())
    assert first.name == "facades" and first.index == 1 and first.ratio_to_standalone == 1.0
    second = pbgan.train("pix2pix", "shoes", EDGES2SHOES, model_dir=root, direction="BtoA", lambda_=0.5, **TINY)
    assert second.options["lambda"] == 0.5 and second.ratio_to_standalone < 1.0
    return root


@needs_data(FACADES)
def test_script_switches_tasks_and_reproduces_generate_bytes(model_dir, tmp_path, cli):
    image = sorted((FACADES / "test").glob("*.jpg"))[0]
    model = pbgan.Model.open(model_dir)
    assert [t.name for t in model.tasks] == ["facades", "shoes"]
    assert set(model.tasks[0].metrics) == {"l1", "psnr", "ssim"}
    for task in ("facades", "shoes", "facades", "shoes"):  # switch back and forth: cold, cold, then cached
        pbgan.save_image(model.translate(task, image, aligned=True), tmp_path / "api" / f"{task}.png")
    for task in ("facades", "shoes"):
        cli("generate", "--task", task, "--aligned", image, tmp_path / "cli" / f"{task}.png", "--model-dir", model_dir)
        assert (tmp_path / "api" / f"{task}.png").read_bytes() == (tmp_path / "cli" / f"{task}.png").read_bytes()
    assert len(model.cache) == 2


@needs_data(FACADES)
def test_first_and_later_translate_agree_bit_for_bit(model_dir):
    model = pbgan.Model.open(model_dir)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    first = model.translate("shoes", x)
    assert torch.equal(model.translate("shoes", x), first)
    with torch.no_grad():
        assert torch.equal(model.generator("shoes")(x), first)
    assert torch.equal(model.translate("shoes", x[0]), first[0])
    cached = next(iter(model.cache._items.values()))[0]
    assert not any(isinstance(m, FilterConv) for m in cached.modules())  # dense from the first use on


@needs_data(FACADES)
def test_generator_is_a_copy_that_cannot_change_the_cached_task(model_dir):
    model = pbgan.Model.open(model_dir)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    before = model.translate("facades", x)
    G = model.generator("facades")
    assert not G.training and not any(isinstance(m, FilterConv) for m in G.modules())
    G.train()
    G(x)  # moves BatchNorm running statistics
    with torch.no_grad():
        next(G.parameters()).add_(1)
    assert torch.equal(model.translate("facades", x), before)
    assert not model.generator("facades").training


@needs_data(FACADES)
def test_translate_and_save_image_take_uint8_float64_and_numpy_images(model_dir, tmp_path):
    model = pbgan.Model.open(model_dir)
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    expected = model.translate("facades", u8.float() / 127.5 - 1)
    for image in (u8, u8.permute(1, 2, 0), u8.numpy(), u8.permute(1, 2, 0).numpy()):  # CHW and HWC
        assert torch.equal(model.translate("facades", image), expected)
    assert torch.equal(model.translate("facades", u8[None].expand(2, -1, -1, -1).numpy())[1], expected)
    assert torch.equal(model.translate("facades", x.double()), model.translate("facades", x))
    assert torch.equal(model.translate("facades", x.numpy()), model.translate("facades", x))
    pbgan.save_image(u8.permute(1, 2, 0).numpy(), tmp_path / "hwc.png")
    pbgan.save_image(u8.float() / 127.5 - 1, tmp_path / "chw.png")
    assert (tmp_path / "hwc.png").read_bytes() == (tmp_path / "chw.png").read_bytes()


@needs_data(FACADES)
def test_translate_takes_pil_images_and_generate_writes_a_folder(model_dir, tmp_path):
    model = pbgan.Model.open(model_dir)
    out = model.translate("facades", Image.new("RGB", (50, 40), (200, 10, 10)))
    assert isinstance(out, Image.Image) and out.size == (32, 32)
    written = model.generate("facades", FACADES / "test", tmp_path / "out", aligned=True)
    assert len(written) == len(list((FACADES / "test").glob("*.jpg")))


@needs_data(FACADES)
def test_evaluate_and_history(model_dir):
    model = pbgan.Model.open(model_dir)
    now = model.evaluate(metrics=["l1", "psnr"], images=2)
    assert set(now) == {"facades", "shoes"} and set(now["shoes"]) == {"l1", "psnr"}
    history = model.history("ssim")
    assert history["tasks"] == ["facades", "shoes"] and history["after"] == ["facades", "shoes"]
    assert history["forgetting"]["facades"] == 0.0  # piggyback: earlier tasks do not change


def test_cache_drops_least_recently_used_over_budget():
    a, b, c = (torch.nn.Linear(16, 16) for _ in range(3))
    size = module_bytes(a)
    assert size == (16 * 16 + 16) * 4
    cache = TaskCache(budget_bytes=2 * size)
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recently used
    cache.put("c", c)
    assert cache.keys() == ["a", "c"] and cache.total_bytes == 2 * size
    tiny = TaskCache(budget_bytes=1)
    tiny.put("a", a)
    assert tiny.keys() == ["a"]  # the newest is kept even over budget


@needs_data(FACADES)
def test_api_errors_are_one_line_pbgan_errors(model_dir, tmp_path):
    model = pbgan.Model.open(model_dir)
    new = tmp_path / "n"

    def train(**options):
        return lambda: pbgan.train("pix2pix", "x", FACADES, model_dir=new, **options)

    image = torch.zeros(3, 32, 32)
    cases = [
        (lambda: model.translate("facades", image, protocol="bogus"), "unknown test-time protocol"),
        (lambda: model.translate("nope", image), "no task 'nope'"),
        (lambda: model.translate("facades", torch.zeros(32, 32)), "translate expects an image of shape (3, H, W)"),
        (lambda: model.translate("facades", torch.zeros(3, 32, 32, dtype=torch.int64)), "got torch.int64"),
        (lambda: model.translate("facades", np.full((32, 32, 3), 255.0)), "float values in [-1, 1], got values in"),
        (lambda: model.translate("facades", torch.full((3, 32, 32), float("nan"))), "float values in [-1, 1]"),
        (lambda: pbgan.save_image(torch.zeros(32, 32), tmp_path / "x.png"), "save_image expects a PIL image or one"),
        (lambda: pbgan.Model.open(tmp_path / "none"), "no pbgan model in"),
        (lambda: pbgan.Model.open(model_dir, cache_bytes="x"), "cache_bytes must be a whole number, got 'x'"),
        (lambda: model.evaluate(images=-1), "images must be >= 0, got -1"),
        (lambda: model.report(tmp_path / "r", samples=0), "samples must be >= 1, got 0"),
        (train(bogus=1), "unknown option --bogus"),
        (train(norm="bogus"), "norm must be one of"),
        (train(size="big"), "--size must be a whole number, got 'big'"),
        (train(steps=1.5), "--steps must be a whole number, got 1.5"),
        (train(log_every="x"), "--log-every must be a whole number, got 'x'"),
        (train(seed=10**23), "--seed must be in [0, 4294967295]"),
        (train(lr=float("nan")), "lr must be a finite number, got nan"),
        (train(num_workers=-1), "num_workers must be in [0, 256], got -1"),
        (train(eval_images=-1), "eval_images must be >= 0, got -1"),
        (train(nproc=0), "--nproc must be >= 1, got 0"),
        (lambda: pbgan.train("pix2pix", "x", 5, model_dir=new), "--data must be a path, got 5"),
    ]
    for call, message in cases:
        with pytest.raises(PbganError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value)
    assert not new.exists() and not (tmp_path / "x.png").exists() and not (tmp_path / "r").exists()


@needs_data(FACADES)
@needs_data(EDGES2SHOES)
def test_resume_with_other_data_is_refused_naming_both(tmp_path):
    def stop_at_step_2(step, total, losses):
        if step == 2:
            raise KeyboardInterrupt

    options = dict(model_dir=tmp_path, direction="BtoA", checkpoint_every=1, **{**TINY, "steps": 3})
    with pytest.raises(PbganError, match="--resume"):
        pbgan.train("pix2pix", "t", FACADES, progress=stop_at_step_2, **options)
    with pytest.raises(PbganError) as info:
        pbgan.train("pix2pix", "t", EDGES2SHOES, resume=True, **options)
    assert f"--data {FACADES}" in str(info.value) and f"--data {EDGES2SHOES}" in str(info.value)


@needs_data(FACADES)
def test_cli_generate_checks_the_input_before_reading_the_model(cli, model_dir, tmp_path):
    _, _, err = cli("generate", "--task", "facades", tmp_path / "missing.png", tmp_path / "o", "--model-dir",
                    model_dir, expect=1)
    assert "does not exist" in one_line_error(err)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_the_python_example_trains_three_tasks_and_plots_them(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--steps", "2", "--size", "32",
                           "--images", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(f"{task}:" in done.stdout for task in ("denoise", "brighten", "negative2photo"))
    with Image.open(tmp_path / "tasks.png") as figure:
        assert figure.size[1] > figure.size[0]  # a row of condition | output | target per task
