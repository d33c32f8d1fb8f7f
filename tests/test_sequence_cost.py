"""After a task is stored, only what can have changed is scored again: a sequence stays linear."""
import pytest

from pbgan_core import engine
from pbgan_core.cli import main
from pbgan_core.errors import PbganError
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore

from .conftest import FACADES, TINY, needs_data

pytestmark = needs_data(FACADES)


def train_counting(model, task, monkeypatch, factorizer="piggyback", *args):
    scored = []
    real = engine.evaluate_task

    def counting(store, plugins, name, *a, **k):
        scored.append(name)
        return real(store, plugins, name, *a, **k)

    monkeypatch.setattr(engine, "evaluate_task", counting)
    assert main(["train", "--arch", "pix2pix", "--task", task, "--model-dir", str(model), "--data", str(FACADES),
                 "--direction", "BtoA", "--factorizer", factorizer, "--steps", "2", *TINY, *args]) == 0
    monkeypatch.setattr(engine, "evaluate_task", real)
    return scored


def test_a_later_task_scores_only_itself_and_carries_earlier_rows(tmp_path, monkeypatch):
    model = tmp_path / "m"
    assert train_counting(model, "one", monkeypatch) == ["one"]
    assert train_counting(model, "two", monkeypatch) == ["two"]
    assert train_counting(model, "three", monkeypatch) == ["three"]
    store = ModelStore(model)
    stages = store.manifest["stages"]
    assert stages[2]["metrics"]["one"] == stages[0]["metrics"]["one"]
    assert stages[2]["metrics"]["two"] == stages[1]["metrics"]["two"]
    # the carried scores are the ones a fresh scoring gives
    plugins = get_plugins()
    fresh = engine.evaluate_task(store, plugins, "one", as_of="three")
    assert fresh == pytest.approx(stages[2]["metrics"]["one"], abs=1e-5)


def test_a_factorizer_that_forgets_scores_every_task_again(tmp_path, monkeypatch):
    model = tmp_path / "m"
    train_counting(model, "one", monkeypatch, "finetune")
    assert sorted(train_counting(model, "two", monkeypatch, "finetune")) == ["one", "two"]


def test_a_changed_earlier_file_is_scored_again_and_named(tmp_path, monkeypatch):
    model = tmp_path / "m"
    train_counting(model, "one", monkeypatch)
    train_counting(model, "two", monkeypatch)
    store = ModelStore(model)
    path = model / store.task("one")["file"]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with store.transaction():
        with pytest.raises(PbganError, match="does not match the hash"):
            engine.evaluate_all(store, get_plugins(), after="two")
