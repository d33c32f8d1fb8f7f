"""A real third-party plugin: installed with pip, found through its entry point, trained with.

Installing leaves the example plugin in the environment (every later run of this test
reinstalls it in place); it only adds names no built-in plugin uses.
"""
import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pbgan_core.hookspecs import hookimpl
from pbgan_core.plugins import NameClash, build_plugins

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "pbgan-example-plugin"
PBGAN = [sys.executable, "-m", "pbgan_core"]


def run(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert done.returncode == 0, f"{args}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed():
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "-e", PACKAGE)
    # New processes import it through the editable install; this one read its .pth files at
    # start-up, so put the package on sys.path for in-process imports (its entry point is
    # now visible to build_plugins here too).
    if str(PACKAGE) not in sys.path:
        sys.path.append(str(PACKAGE))
        importlib.invalidate_caches()


def test_pip_install_makes_the_plugin_appear_with_its_version(installed):
    rows = {r["name"]: r for r in json.loads(run(*PBGAN, "list-plugins", "--json").stdout)}
    example = rows["example"]
    assert example["distribution"] == "pbgan-example-plugin" and example["version"] == "0.1.0"
    assert example["provides"] == {"architectures": ["tinygan"], "datasets": ["shapes"], "loggers": ["csv"]}


def test_the_plugins_architecture_trains_and_generates(installed, tmp_path):
    model = tmp_path / "model"
    common = ["--size", "16", "--steps", "3", "--ngf", "4", "--ndf", "4", "--shapes-count", "4",
              "--eval-images", "2", "--device", "cpu", "--model-dir", model]
    run(*PBGAN, "train", "--arch", "tinygan", "--task", "shapes1", "--data", "synthetic", "--logger", "csv", *common)
    rows = (model / "logs" / "shapes1.csv").read_text().splitlines()  # the plugin's logger, beside the jsonl log
    assert rows[0] == "step,lr,G_GAN,G_L1,D" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert (model / "logs" / "shapes1.jsonl").exists()
    # a 4-filter-wide generator: its coefficients alone take more than the default --budget
    run(*PBGAN, "train", "--arch", "tinygan", "--task", "shapes2", "--data", "synthetic", "--budget", "0.5", *common)
    report = json.loads(run(*PBGAN, "tasks", "--json", "--model-dir", model).stdout)
    assert [r["arch"] for r in report["tasks"]] == ["tinygan", "tinygan"]
    assert 0 < report["tasks"][1]["ratio_to_standalone"] < 1  # piggybacks on the first task's filters
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["tasks"][0]["train"]["steps"] == 3 and "l1" in manifest["tasks"][1]["metrics"]

    from pbgan_example_plugin.shapes import draw_shape
    from pbgan_core.images import write_image

    a, _ = draw_shape(16, 7)
    write_image(a, tmp_path / "outline.png")
    run(*PBGAN, "generate", "--task", "shapes1", "--model-dir", model, tmp_path / "outline.png", tmp_path / "out")
    assert (tmp_path / "out" / "outline.png").stat().st_size > 0


def test_the_shapes_dataset_is_deterministic_and_paired(installed):
    from pbgan_example_plugin.shapes import ShapesDataset

    opts = {"size": 24, "shapes_count": 5}
    first = ShapesDataset().build(Path("unused"), "train", opts, train=True)
    again = ShapesDataset().build(Path("unused"), "train", opts, train=True)
    test = ShapesDataset().build(Path("unused"), "test", opts, train=False)
    assert len(first) == 5
    item = first[3]
    assert item["A"].shape == item["B"].shape == (3, 24, 24)
    assert item["A"].min() >= -1 and item["B"].max() <= 1
    assert (item["A"] == again[3]["A"]).all() and not (item["B"] == test[3]["B"]).all()
    assert ((item["A"] < 0) & (item["B"] == 1).all(0)).sum() == 0  # outline pixels lie on the shape


def test_a_plugin_that_reuses_a_factorizer_name_is_refused():
    from pbgan_plugins.factorizers import StandaloneFactorizer

    copycat = types.SimpleNamespace()

    @hookimpl
    def register_factorizers(register):
        register(StandaloneFactorizer())

    copycat.register_factorizers = register_factorizers
    with pytest.raises(NameClash) as clash:
        build_plugins(extra={"copycat": copycat})
    message = str(clash.value)
    assert "'standalone'" in message and "'copycat'" in message and "'factorizers'" in message
