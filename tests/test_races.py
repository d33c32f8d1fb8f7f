"""Two writing commands against one model directory, in two processes: both tasks survive, or one
command is refused with a clear message. Never is a task lost.

The interleavings are forced, not left to timing: the second command either waits just before the
lock (it has read the manifest early) while the first runs whole, or runs whole while the first
holds the lock. The first case is how `import` once overwrote a task `train` had just stored.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pbgan_core.cli import main
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.verify import verify_model
from tests.conftest import FACADES, TINY, needs_data
from tests.forked import Forked
from tests.test_interop import reference_checkpoint

pytestmark = needs_data(FACADES)

FAST = [*TINY, "--max-images", "2", "--eval-images", "1"]
REFUSALS = ("is in use by another pbgan process", "exists already", "has tasks already")


def command(kind: str, name: str, files: Path) -> list:
    if kind == "train":
        return ["train", "--arch", "pix2pix", "--task", name, "--data", FACADES, *FAST, "--steps", 1]
    if kind == "import":
        return ["import", "--arch", "pix2pix", "--task", name, "--data", FACADES, "--direction", "BtoA",
                "--eval-images", 1, files / "latest_net_G.pth"]
    return [kind]  # eval (records the missing metrics row), gc


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An empty model directory, and a one-task model whose metrics row is missing (so eval writes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("races")
    reference_checkpoint(root / "latest_net_G.pth")  # a unet_32 with ngf 8, as TINY trains
    one = root / "one"
    assert main([str(a) for a in [*command("train", "first", root), "--model-dir", one]]) == 0
    manifest = json.loads((one / "manifest.json").read_text())
    manifest["stages"].clear()
    (one / "manifest.json").write_text(json.dumps(manifest))
    yield root, one
    torch.set_num_threads(threads)


def check_outcome(model: Path, runs: dict[str, tuple[list, int, str]], before: list[str]) -> None:
    store = ModelStore(model)
    names = [t["name"] for t in store.tasks]
    assert names[: len(before)] == before, "an earlier task was lost"
    for label, (argv, code, text) in runs.items():
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert "Traceback" not in text, text
        if code != 0:
            assert len(errors) == 1 and any(r in errors[0] for r in REFUSALS), f"{label}: {text}"
            continue
        assert not errors, text
        if argv[0] in ("train", "import"):
            assert argv[argv.index("--task") + 1] in names, f"{label} succeeded but its task is gone"
        if argv[0] == "eval" and "warning:" not in text:  # it warns when the lock was taken
            assert not store.missing_stages()
    assert verify_model(store, get_plugins(), lambda name, problems: None) == 0


PAIRS_EMPTY = [("import", "import"), ("import", "train"), ("train", "import"), ("import", "gc"), ("gc", "import")]
PAIRS_ONE = [("train", "train"), ("train", "eval"), ("eval", "train"), ("train", "gc"), ("gc", "train"),
             ("eval", "eval"), ("eval", "gc"), ("gc", "eval"), ("gc", "gc")]


@pytest.mark.parametrize("first, second", [*PAIRS_EMPTY, *PAIRS_ONE], ids=lambda k: k)
@pytest.mark.parametrize("when", ["second-waits-at-the-lock", "second-runs-while-first-holds-it"])
def test_two_writers(models, first, second, when, tmp_path):
    files, one = models
    start = [] if (first, second) in PAIRS_EMPTY else ["first"]
    model = tmp_path / "m"
    if start:
        shutil.copytree(one, model)
    else:
        model.mkdir()
    a = [*command(first, "a", files), "--model-dir", model]
    b = [*command(second, "b", files), "--model-dir", model]
    if when == "second-waits-at-the-lock":
        waiting = Forked(b, pause="before-lock")
        assert waiting.paused()
        runs = {"first": (a, *Forked(a).finish())}
        runs["second"] = (b, *waiting.finish())
    else:
        holding = Forked(a, pause="holding-lock")
        assert holding.paused()
        runs = {"second": (b, *Forked(b).finish())}
        runs["first"] = (a, *holding.finish())
        code, text = runs["second"][1:]
        assert "in use by another pbgan process" in text, text
        assert code == 0 if second == "eval" else code != 0, text  # eval still shows the metrics, warned
        assert runs["first"][1] == 0, runs["first"][2]
    check_outcome(model, runs, start)


def test_import_that_read_the_manifest_before_a_training_stored_its_task_is_refused(models, tmp_path):
    """The lost-task case: import checks the model early, a training stores a task meanwhile."""
    files, _ = models
    model = tmp_path / "m"
    importing = Forked([*command("import", "ref", files), "--model-dir", model], pause="before-lock")
    assert importing.paused()
    code, text = Forked([*command("train", "trained", files), "--model-dir", model]).finish()
    assert code == 0, text
    code, text = importing.finish()
    assert code == 1 and "has tasks already" in text, text
    assert [t["name"] for t in ModelStore(model).tasks] == ["trained"]
