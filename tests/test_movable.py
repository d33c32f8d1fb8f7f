"""A model directory records its tasks' data so it can be moved or copied with its data and opened
from any folder; `--data TASK=PATH` / `data={task: path}` point a task at its data's new place; the
directory explains itself in a generated README.md."""
import json
import shutil
from pathlib import Path

import pytest

import pbgan
from pbgan_core.errors import PbganError
from pbgan_core.store import ModelStore

from .conftest import FACADES, one_line_error

TINY = dict(size=32, ngf=8, ndf=8, eval_images=2, device="cpu", steps=2, bn_images=0)


def small_copy(to: Path) -> Path:
    """A few facades images in the pix2pix layout."""
    for split, count in (("train", 4), ("test", 2)):
        (to / split).mkdir(parents=True)
        for f in sorted((FACADES / split).iterdir())[:count]:
            shutil.copy(f, to / split / f.name)
    return to


@pytest.fixture
def project(tmp_path, monkeypatch):
    """project/data/facades and project/m, trained from inside project/ with relative paths."""
    if not FACADES.exists():
        pytest.skip("shared data not available")
    root = tmp_path / "project"
    small_copy(root / "data" / "facades")
    monkeypatch.chdir(root)
    pbgan.train("pix2pix", "facades", "data/facades", model_dir="m", direction="BtoA", **TINY)
    monkeypatch.chdir(tmp_path)
    return root


def test_entry_records_absolute_and_model_relative_data(project):
    entry = ModelStore(project / "m").task("facades")
    assert entry["data"] == str(project / "data" / "facades")
    assert entry["data_from_model"] == "../data/facades"


def test_moved_model_with_its_data_opens_from_any_folder(project, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "project"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    scores = pbgan.Model.open(moved / "m").evaluate()
    assert set(scores) == {"facades"} and scores["facades"]["psnr"] > 0


def test_data_moved_alone_is_named_and_given_a_new_place(project, tmp_path, cli):
    new_place = tmp_path / "new" / "facades"
    new_place.parent.mkdir()
    shutil.move(project / "data" / "facades", new_place)
    model = pbgan.Model.open(project / "m")
    with pytest.raises(PbganError, match=r"of task 'facades' \(where it was trained\) does not exist; if the data "
                                         r"moved, give its new place with --data facades=PATH") as raised:
        model.evaluate()
    assert "check the path given to --data" not in str(raised.value)  # nobody gave one
    assert set(model.evaluate(data={"facades": new_place})) == {"facades"}
    _, _, err = cli("eval", "--model-dir", project / "m", expect=1)
    assert "--data facades=PATH" in one_line_error(err)
    _, out, _ = cli("eval", "--model-dir", project / "m", "--data", f"facades={new_place}", "--json")
    assert json.loads(out)["metrics"]["facades"]["psnr"] > 0
    cli("report", "--model-dir", project / "m", "--data", f"facades={new_place}", "--samples", "1")
    assert (project / "m" / "report" / "index.html").exists()


@pytest.mark.parametrize("given, message", [("facades", "--data expects TASK=PATH"),
                                            ("nope=.", "no task 'nope'"),
                                            ("facades=/no/such/folder", "does not exist")])
def test_bad_data_option_is_one_line(project, cli, given, message):
    _, _, err = cli("eval", "--model-dir", project / "m", "--data", given, expect=None)
    assert message in one_line_error(err)


def test_older_manifest_with_data_as_typed_still_works(project, monkeypatch):
    manifest = project / "m" / "manifest.json"
    doc = json.loads(manifest.read_text())
    entry = doc["tasks"][0]
    entry["data"] = "data/facades"
    del entry["data_from_model"], entry["entry_sha256"]  # older entries had neither
    manifest.write_text(json.dumps(doc))
    monkeypatch.chdir(project)
    assert set(pbgan.Model.open("m").evaluate()) == {"facades"}


def test_model_directory_has_a_generated_readme_that_is_no_leftover(project, cli):
    readme = (project / "m" / "README.md").read_text()
    assert f"| 1 | facades | piggyback | BtoA | {project / 'data' / 'facades'} | 2 |" in readme
    assert 'pbgan.Model.open("MODEL_DIR")' in readme and "pbgan generate --model-dir MODEL_DIR --task facades" in readme
    store = ModelStore(project / "m")
    assert store.leftovers() == []
    (project / "m" / ".README.md.abc123.tmp").write_text("cut short")
    assert [p.name for p in store.leftovers()] == [".README.md.abc123.tmp"]
    cli("gc", "--model-dir", project / "m")
    assert (project / "m" / "README.md").exists() and not (project / "m" / ".README.md.abc123.tmp").exists()


def test_missing_metrics_row_is_recorded_from_the_data_given(project, tmp_path, cli):
    new_place = tmp_path / "facades"
    shutil.move(project / "data" / "facades", new_place)
    manifest = project / "m" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["stages"].pop()  # as a final evaluation cut short leaves it
    manifest.write_text(json.dumps(doc))
    _, out, _ = cli("eval", "--model-dir", project / "m", "--data", f"facades={new_place}", "--json")
    assert json.loads(out)["recorded_rows_after"] == ["facades"]
