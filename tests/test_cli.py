"""The command line: help, listings, and one clear error line for every kind of bad input."""
import json

import pytest

from pbgan_core import __version__

from .conftest import FACADES, TINY, needs_data, one_line_error


def test_version(cli):
    _, out, _ = cli("--version")
    assert out.strip() == f"pbgan {__version__}"


@pytest.mark.parametrize("command", ["train", "generate", "tasks", "list-plugins", "demo"])
def test_every_command_has_help_with_an_example(cli, command):
    _, out, _ = cli(command, "--help")
    assert "Example: pbgan" in out


def test_list_plugins_json_lists_the_builtin_plugins(cli):
    _, out, _ = cli("list-plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["pix2pix"]["provides"]["architectures"] == ["pix2pix"]
    assert rows["piggyback"]["provides"]["factorizers"] == ["piggyback"]
    assert {"aligned", "derived", "folder", "unaligned"} <= set(rows["datasets"]["provides"]["datasets"])
    assert {"l1", "psnr", "ssim"} <= set(rows["metrics"]["provides"]["metrics"])
    assert rows["pix2pix"]["distribution"] == "pbgan" and rows["pix2pix"]["version"] == __version__
    assert rows["verify"]["provides"]["commands"] == ["gc", "recover", "verify"]
    assert rows["known_data"]["provides"]["commands"] == ["data"]


@needs_data(FACADES)
@pytest.mark.parametrize("args, message", [
    (["--arch", "nope"], "unknown architecture 'nope'"),
    (["--arch", "pix2pix", "--factorizer", "nope"], "unknown factorizer 'nope'"),
    (["--arch", "pix2pix", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["--arch", "pix2pix", "--bogus", "1"], "unknown option --bogus"),
    (["--arch", "pix2pix", "--ngf", "many"], "--ngf expects int"),
    (["--arch", "pix2pix", "--norm", "group"], "--norm must be one of"),
    (["--arch", "pix2pix", "--direction", "sideways"], "--direction must be one of AtoB, BtoA"),
    (["--arch", "pix2pix", "--task", "bad/name"], "is not allowed"),
])
def test_bad_train_arguments(cli, tmp_path, args, message):
    base = ["train", "--task", "t", "--data", FACADES, "--model-dir", tmp_path / "m", "--steps", "1"]
    if "--task" in args:
        base = base[:1] + base[3:]
    _, _, err = cli(*base, *args, expect=None)
    assert message in one_line_error(err)
    assert not (tmp_path / "m" / "manifest.json").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty" / "train").mkdir(parents=True) or p / "empty", "no usable image"),
    (lambda p: (p / "x").mkdir() or p / "x", "train"),
])
def test_missing_or_empty_data_folder(cli, tmp_path, make, message):
    data = make(tmp_path)
    code, _, err = cli("train", "--arch", "pix2pix", "--task", "t", "--data", data, "--model-dir", tmp_path / "m",
                       "--steps", "1", *TINY, expect=None)
    assert code != 0 and message in one_line_error(err)


def test_unreadable_image_in_generate(cli, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    (tmp_path / "m").mkdir()
    code, _, err = cli("generate", "--task", "x", "--model-dir", tmp_path / "m", bad, tmp_path / "out", expect=1)
    assert "no pbgan model" in one_line_error(err)


def test_commands_on_a_missing_model(cli, tmp_path):
    _, _, err = cli("tasks", "--model-dir", tmp_path / "none", expect=1)
    assert "no pbgan model" in one_line_error(err)


def test_unknown_command_is_one_line(cli):
    code, _, err = cli("frobnicate", expect=None)
    assert code == 2 and "frobnicate" in one_line_error(err)


def test_known_dataset_without_download_says_how(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PBGAN_DATA_HOME", str(tmp_path / "home"))
    _, _, err = cli("train", "--arch", "pix2pix", "--task", "edges2shoes", "--model-dir", tmp_path / "m", expect=1)
    assert "pbgan data download edges2shoes" in one_line_error(err)


def test_unknown_task_without_data_needs_data(cli, tmp_path):
    _, _, err = cli("train", "--arch", "pix2pix", "--task", "mine", "--model-dir", tmp_path / "m", expect=2)
    assert "--data is required" in one_line_error(err)


@needs_data(FACADES)
def test_train_generate_tasks_end_to_end(cli, tmp_path):
    model = tmp_path / "model"
    cli("train", "--arch", "pix2pix", "--task", "facades", "--data", FACADES, "--direction", "BtoA",
        "--model-dir", model, "--steps", "3", *TINY)
    out = tmp_path / "out"
    _, stdout, _ = cli("generate", "--task", "facades", "--aligned", "--model-dir", model, FACADES / "test", out)
    produced = sorted(p.name for p in out.iterdir())
    assert len(produced) == 106 and "1.png" in produced and "106.png" in produced
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes((FACADES / "test" / "1.jpg").read_bytes()[:500])
    (bad / "ok.jpg").write_bytes((FACADES / "test" / "2.jpg").read_bytes())
    code, _, err = cli("generate", "--task", "facades", "--model-dir", model, bad, tmp_path / "out2", expect=0)
    assert "skipped 1 unreadable image" in err and (tmp_path / "out2" / "ok.png").exists()
    _, _, err = cli("generate", "--task", "facades", "--model-dir", model, bad / "broken.jpg", tmp_path / "o.png",
                    expect=1)
    assert "broken.jpg" in one_line_error(err)
    _, _, err = cli("generate", "--task", "nope", "--model-dir", model, bad, tmp_path / "o", expect=1)
    assert "no task 'nope'" in one_line_error(err)
    _, out_json, _ = cli("tasks", "--json", "--model-dir", model)
    assert json.loads(out_json)["tasks"][0]["name"] == "facades"
    _, table, _ = cli("tasks", "--model-dir", model)
    assert "facades" in table and "1.000" in table


def test_second_writer_is_stopped_by_the_lock(tmp_path):
    import os

    from pbgan_core.errors import PbganError
    from pbgan_core.store import ModelStore

    store = ModelStore(tmp_path / "m")
    with store.transaction():
        with pytest.raises(PbganError, match=f"in use by another pbgan process \\(pid {os.getpid()}\\)"):
            with ModelStore(tmp_path / "m").transaction():
                pass
    assert not (tmp_path / "m").exists()  # nothing was written: no empty model directory is left
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".lock").write_text("999999999")  # a killed holder's lock file is taken over
    with ModelStore(tmp_path / "m").transaction():
        assert (tmp_path / "m" / ".lock").read_text() == str(os.getpid())


def test_manifest_from_the_future_is_refused(cli, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"format": 99, "tasks": []}))
    _, _, err = cli("tasks", "--model-dir", tmp_path / "m", expect=1)
    assert "newer than this pbgan understands" in one_line_error(err)


@needs_data(FACADES)
@pytest.mark.parametrize("arch, args", [("pix2pix", ["--size", "16", "--ngf", "4", "--ndf", "4"]),
                                        ("pix2pix", ["--size", "32", "--netD", "n_layers", "--n-layers-d", "6"])])
def test_images_too_small_for_the_discriminator(cli, tmp_path, arch, args):
    _, _, err = cli("train", "--arch", arch, "--task", "t", "--data", FACADES, "--model-dir", tmp_path / "m",
                    "--steps", "1", "--max-images", "4", *args, expect=1)
    assert "too small for --netD" in one_line_error(err)


@needs_data(FACADES)
@pytest.mark.parametrize("flag, key", [("--channels-last", "channels_last"), ("--compile", "compile")])
def test_speed_options_train_and_store_a_usable_task(cli, tmp_path, flag, key):
    cli("train", "--arch", "pix2pix", "--task", "fast", "--data", FACADES, "--model-dir", tmp_path / "m",
        "--steps", "2", *TINY, flag)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["tasks"][0]["options"][key] is True
    cli("generate", "--task", "fast", "--model-dir", tmp_path / "m", FACADES / "test" / "1.jpg", tmp_path / "o.png")
    assert (tmp_path / "o.png").exists()
