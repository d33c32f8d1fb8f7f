"""`pbgan run EXPERIMENT.toml`: a lifelong experiment in one file, interrupted and continued,
compared over methods and seeds."""
import csv
import json
import signal

import pytest

from pbgan_core.engine import Interrupted
from pbgan_core.errors import PbganError
from pbgan_core.experiment import load_experiment, run_experiment
from pbgan_core.store import ModelStore

from .conftest import EDGES2SHOES, FACADES, ROOT, one_line_error

HEAD = """model_dir = "runs"
methods = ["piggyback", "standalone-warm"]
seeds = [0, 1]
"""
DEFAULTS = """[defaults]
arch = "pix2pix"
size = 32
ngf = 8
ndf = 8
steps = 3
max-images = 4
eval-images = 1
bn-images = 0
checkpoint-every = 0
device = "cpu"
"""
TASKS = f"""[[task]]
name = "facades"
data = "{FACADES}"
direction = "BtoA"

[[task]]
name = "shoes"
data = "{EDGES2SHOES}"
direction = "BtoA"

[[task]]
name = "facades-gray"
data = "{FACADES}"
derive = "grayscale"
half = "A"
"""
INTERRUPTED_AT = "standalone-warm seed 0: shoes"


def interrupting(trained: list[str]):
    """Progress listeners that record what trains and press Ctrl-C at step 2 of one task."""
    def progress(label: str):
        trained.append(label)

        class Interrupter:
            def on_step(self, event):
                if label.startswith(INTERRUPTED_AT) and event.step == 2:
                    signal.raise_signal(signal.SIGINT)
        return Interrupter()
    return progress


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Run the experiment, interrupted inside its second model, then again to the end."""
    if not (FACADES.exists() and EDGES2SHOES.exists()):
        pytest.skip("shared data not available")
    folder = tmp_path_factory.mktemp("experiment")
    (folder / "e.toml").write_text(HEAD + DEFAULTS + TASKS)
    experiment = load_experiment(folder / "e.toml")
    first: list[str] = []
    with pytest.raises(Interrupted, match=r"interrupted at step 2 of 3: task 'shoes' is not stored in .*"
                                          r"standalone-warm-seed0; run `pbgan run .*e.toml` again"):
        run_experiment(experiment, progress=interrupting(first))
    second: list[str] = []
    results = run_experiment(load_experiment(folder / "e.toml"), progress=second.append)
    return folder, first, second, results


def test_interrupted_run_continues_where_it_stopped(finished):
    folder, first, second, _ = finished
    assert [label.split(" (")[0] for label in first] == [
        "piggyback seed 0: facades", "piggyback seed 0: shoes", "piggyback seed 0: facades-gray",
        "standalone-warm seed 0: facades", "standalone-warm seed 0: shoes"]
    assert [label.split(" (")[0] for label in second][:2] == ["standalone-warm seed 0: shoes",
                                                              "standalone-warm seed 0: facades-gray"]
    assert len(second) == 2 + 2 * 3  # the rest of seed 0, then both models of seed 1
    shoes = ModelStore(folder / "runs" / "standalone-warm-seed0").task("shoes")
    assert shoes["train"]["resumed_at_step"] == 2 and shoes["train"]["steps"] == 3
    for method in ("piggyback", "standalone-warm"):
        for seed in (0, 1):
            model = folder / "runs" / f"{method}-seed{seed}"
            assert [t["name"] for t in ModelStore(model).tasks] == ["facades", "shoes", "facades-gray"]
            assert (model / "report" / "index.html").exists() and (model / "README.md").exists()


def test_comparison_has_a_row_per_method_and_task(finished):
    folder, _, _, results = finished
    rows = results["rows"]
    assert [(r["method"], r["task"]) for r in rows] == [
        (m, t) for m in ("piggyback", "standalone-warm") for t in ("facades", "shoes", "facades-gray")]
    assert all(r["seeds"] == 2 for r in rows)
    warm = [r for r in rows if r["method"] == "standalone-warm"]
    assert all(r["ssim_ratio"] == pytest.approx(1.0) and r["ssim_ratio_sd"] == 0 for r in warm)
    piggy = [r for r in rows if r["method"] == "piggyback"]
    assert all(r["stored_ratio"] < 1 for r in piggy[1:]) and piggy[0]["stored_ratio"] == 1
    assert json.loads((folder / "runs" / "results.json").read_text())["rows"] == json.loads(json.dumps(rows))
    with open(folder / "runs" / "results.csv") as f:
        assert [(r["method"], r["task"]) for r in csv.DictReader(f)] == [(r["method"], r["task"]) for r in rows]


def test_finished_experiment_runs_again_without_training(finished, cli):
    folder = finished[0]
    _, out, _ = cli("run", folder / "e.toml")
    out = "".join(out.split())  # rich wraps long lines
    assert "ratiostostandalone-warm" in out and "runs/results.csv" in out
    assert "seed0:facades(" not in out  # nothing trained again


def test_changed_option_of_a_stored_task_is_named(finished, cli):
    folder = finished[0]
    changed = TASKS.replace('direction = "BtoA"\n\n[[task]]\nname = "shoes"',
                            'direction = "BtoA"\nsteps = 5\n\n[[task]]\nname = "shoes"')
    (folder / "changed.toml").write_text(HEAD + DEFAULTS.replace("ndf = 8", "ndf = 16") + changed)
    _, _, err = cli("run", folder / "changed.toml", expect=1)
    line = one_line_error(err)
    assert "task 'facades' is stored in" in line and "piggyback-seed0" in line
    assert "ndf 8 (the file: 16)" in line and "steps 3 (the file: 5)" in line


@pytest.mark.parametrize("text, message", [
    (HEAD + DEFAULTS + "ngff = 8\n" + TASKS, "unknown key 'ngff' in [defaults]"),
    (HEAD + DEFAULTS + TASKS + "serial = true\n", "unknown key 'serial' in [[task]] 'facades-gray'"),
    (HEAD.replace("[0, 1]", "[0, 1]\nmodels = 2") + DEFAULTS + TASKS, "unknown key 'models' at the top"),
    (HEAD.replace("standalone-warm", "warm") + DEFAULTS + TASKS, "methods in"),
    (HEAD + DEFAULTS + "factorizer = \"mask\"\n" + TASKS, "factorizer is set by methods"),
    (HEAD + DEFAULTS.replace("ngf = 8", "ngf = \"eight\"") + TASKS, "ngf expects int"),
    (HEAD + DEFAULTS + "[[task]\n", "is not valid TOML"),
    (HEAD + DEFAULTS.replace("ndf = 8", "lambda-l11 = 8") + TASKS, "unknown key 'lambda-l11' in [defaults]"),
    (HEAD + DEFAULTS + TASKS + '[[task]]\nname = "shoes"\n', "two [[task]] tables in"),
])
def test_bad_experiment_file_is_one_line_before_training(tmp_path, cli, text, message):
    (tmp_path / "e.toml").write_text(text)
    _, _, err = cli("run", tmp_path / "e.toml", expect=None)
    assert message in one_line_error(err)
    assert not (tmp_path / "runs").exists()


def test_binary_experiment_file_is_one_line(tmp_path, cli):
    (tmp_path / "e.toml").write_bytes(bytes([0xFA, 0xFF, 0x00, 0x81]))
    _, _, err = cli("run", tmp_path / "e.toml", expect=1)
    assert "is not a text file" in one_line_error(err)


def test_examples_are_valid_experiments():
    for name, runs in (("three_tasks.toml", 4), ("one_model.toml", 1)):
        experiment = load_experiment(ROOT / "examples" / name)
        assert len(experiment.runs) == runs and len(experiment.tasks) == 3


def test_comparison_table_keeps_every_number_whole_at_80_columns():
    from rich.console import Console

    from pbgan_core.experiment import comparison, comparison_table

    tasks = ["facades", "edges2shoes", "facades-gray"]
    runs = [{"method": m, "seed": s, "final": {t: {"psnr": 14.5 + s, "ssim": 0.3312 + 0.01 * s, "l1": 0.2311}
                                               for t in tasks},
             "stored": {t: 100 if m == "piggyback" and t != "facades" else 333 for t in tasks}, "standalone": 333}
            for s in (0, 1) for m in ("piggyback", "standalone-warm")]
    results = {"baseline": "standalone-warm", "rows": comparison(runs, tasks)}
    for width in (80, 120):
        console = Console(width=width, record=True)
        console.print(comparison_table(results, width))
        text = console.export_text()
        assert "…" not in text and max(map(len, text.splitlines())) <= width
        for number in ("15.0", "±0.7", "0.336", "±0.007", "1.000", "±0.000", "0.300", "standalone-warm", "facades-gray"):
            assert number in text, (width, number)
