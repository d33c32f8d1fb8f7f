"""Stored tasks keep their function across versions, and later tasks must build the same generator."""
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import pbgan_core.store as store_module
from pbgan_core.engine import PROBE_TOLERANCE, probe_difference, probe_task_outputs
from pbgan_core.plugins import get_plugins
from pbgan_core.store import FORMAT, ModelStore, stored_options
from pbgan_plugins.piggyback import COEF_SCALE
from tests.conftest import FACADES, TINY, needs_data, one_line_error

# Two tiny piggyback tasks written by pbgan before --coef-scale existed (manifest format 1), with
# the probe hash each task recorded then, and their probe outputs (recomputed where they matched
# that hash bit for bit): on another CPU they may differ in the last bits, never beyond the tolerance.
FORMAT1_MODEL = Path(__file__).parent / "data" / "format1-model"
FORMAT1_PROBES = Path(__file__).parent / "data" / "format1-probe.safetensors"


def recorded_probe(name: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in load_file(FORMAT1_PROBES).items() if k.startswith(f"{name}/")}


def test_format1_entry_reads_options_as_its_format_had_them():
    old = {"options": {"lambda": 0.25}}
    assert stored_options(old)["coef_scale"] == 1.0
    assert stored_options({"format": FORMAT, "options": {"coef_scale": 30.0}})["coef_scale"] == 30.0
    assert stored_options({"options": {"coef_scale": 30.0}})["coef_scale"] == 30.0  # recorded: kept
    assert "coef_scale" not in stored_options({"format": FORMAT, "options": {}})
    assert stored_options({"format": 2, "options": {"allocation": "small-free"}})["budget"] == 0.0
    assert "budget" not in stored_options({"format": FORMAT, "options": {}})


def test_checked_in_format1_model_computes_what_it_computed_when_written(cli, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(FORMAT1_MODEL, model)
    store = ModelStore(model)
    assert store.manifest["format"] == 1 and all("coef_scale" not in t["options"] for t in store.tasks)
    for entry in store.tasks:
        now = probe_task_outputs(store, get_plugins(), entry["name"])
        assert probe_difference(recorded_probe(entry["name"]), now) <= PROBE_TOLERANCE
    _, out, _ = cli("verify", "--model-dir", model)  # bit-identical here, or a NOTE where kernels round differently
    assert "FAIL" not in out and out.count("its manifest entry has no hash") == 2
    # read with today's default coefficient scale instead, the piggyback task would compute another function
    monkeypatch.setattr(store_module, "OPTIONS_ADDED", {2: {k: v for k, v in store_module.OPTIONS_ADDED[2].items()
                                                            if k != "coef_scale"}})
    now = probe_task_outputs(ModelStore(model), get_plugins(), "second")
    assert probe_difference(recorded_probe("second"), now) > 100 * PROBE_TOLERANCE


def test_new_entries_record_their_format(cli, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FORMAT1_MODEL.parent / "format1-data", data)
    model = tmp_path / "m"
    cli("train", "--arch", "pix2pix", "--task", "t", "--data", data, "--size", 8, "--ngf", 2, "--ndf", 2,
        "--netD", "pixel", "--steps", 1, "--eval-images", 1, "--model-dir", model)
    entry = ModelStore(model).task("t")
    assert entry["format"] == FORMAT and entry["options"]["coef_scale"] == COEF_SCALE


@needs_data(FACADES)
@pytest.mark.parametrize("option,value,first", [("--norm", "instance", "batch"), ("--no-dropout", "true", "False"),
                                                ("--arch", "cyclegan", "pix2pix")])
def test_later_task_with_another_generator_names_the_option(cli, tmp_path, option, value, first):
    model = tmp_path / "m"
    cli("train", "--arch", "pix2pix", "--task", "a", "--data", FACADES, *TINY, "--max-images", 2, "--steps", 1,
        "--model-dir", model)
    arch = ["--arch", value, "--dataset", "aligned"] if option == "--arch" else ["--arch", "pix2pix", option, value]
    _, _, err = cli("train", *arch, "--task", "b", "--data", FACADES, *TINY, "--max-images", 2, "--steps", 1,
                    "--model-dir", model, expect=1)
    line = one_line_error(err)
    assert f"{option} {first}" in line and "first task 'a'" in line and "internal error" not in line
    assert [t["name"] for t in ModelStore(model).tasks] == ["a"]


# Five tiny piggyback tasks written by pbgan with manifest format 4, before the bank was read by rows
# and before --bank-limit 1 was the default: "third" combines at most 1x and "fifth" 0.5x each large
# layer's filters, the others the whole bank. Each task's probe file holds the outputs it computed then.
FORMAT4_MODEL = Path(__file__).parent / "data" / "format4-model"


def test_checked_in_format4_model_computes_what_it_computed_when_written(cli, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(FORMAT4_MODEL, model)
    shutil.copytree(FORMAT1_MODEL.parent / "format1-data", tmp_path / "data")  # where its entries say
    before = {p.relative_to(model): p.read_bytes() for p in model.rglob("*.safetensors")}
    store = ModelStore(model)
    assert [stored_options(t)["bank_limit"] for t in store.tasks] == [0.0, 0.0, 1.0, 0.0, 0.5]
    for entry in store.tasks:
        recorded = load_file(model / entry["probe_file"])
        now = probe_task_outputs(store, get_plugins(), entry["name"])
        assert set(now) == set(recorded)
        assert probe_difference(recorded, now) <= PROBE_TOLERANCE
    _, out, _ = cli("verify", "--model-dir", model)
    assert [line.split()[:2] for line in out.splitlines() if line.startswith(("OK", "FAIL"))] == [
        ["OK", f"{name}:"] for name in ("first", "second", "third", "fourth", "fifth")]
    # a task trained now, at today's defaults, leaves every stored file as it was
    cli("train", "--arch", "pix2pix", "--task", "sixth", "--data", tmp_path / "data", "--steps", 2,
        "--eval-images", 1, "--ndf", 2, "--netD", "pixel", "--model-dir", model)
    assert {p: (model / p).read_bytes() for p in before} == before
    _, out, _ = cli("verify", "--model-dir", model)
    assert sum(line.startswith("OK") for line in out.splitlines()) == 6
    assert not any(line.startswith("FAIL") for line in out.splitlines())
