"""Piggyback's allocation, free-filter and mixing options: each setting trains, stores and reloads
its tasks exactly, and earlier tasks stay bit-identical after later ones."""
import json

import pytest

from pbgan_core.cli import main
from pbgan_core.engine import probe_task
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore

from .conftest import FACADES, TINY, needs_data

pytestmark = needs_data(FACADES)

SETTINGS = {
    "paper": ["--allocation", "uniform", "--free-init", "copy", "--no-free-last", "--coef-scale", "1",
              "--no-mix-free"],
    "small-free-unmixed-fresh": ["--allocation", "small-free", "--no-mix-free", "--free-init", "fresh"],
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_setting_keeps_earlier_tasks_and_reloads_exactly(setting, tmp_path, cli):
    model = tmp_path / "model"
    plugins = get_plugins()
    probes = {}
    for k, task in enumerate(("first", "second", "third")):
        assert main(["train", "--arch", "pix2pix", "--task", task, "--data", str(FACADES), *TINY, "--max-images", "4",
                     "--steps", "2", "--model-dir", str(model), *SETTINGS[setting]]) == 0
        store = ModelStore(model)
        for earlier, probe in probes.items():
            assert probe_task(store, plugins, earlier) == probe, f"{earlier} changed after {task}"
        probes[task] = probe_task(store, plugins, task)
    _, out, err = cli("verify", "--model-dir", model)  # recomputes every stored task's probe output
    assert "OK    third" in out and not err
    rows = json.loads(cli("tasks", "--json", "--model-dir", model)[1])["tasks"]
    assert all(0.2 < r["ratio_to_standalone"] < 0.45 for r in rows[1:])
