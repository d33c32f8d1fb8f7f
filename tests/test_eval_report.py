"""`pbgan eval` and `pbgan report`: the task-by-stage matrix, forgetting, and an HTML page whose
images exist."""
import importlib.util
import json
import math
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image

from pbgan_core.report import baseline_ratios, forgetting, stage_matrix

from .conftest import EDGES2SHOES, FACADES, TINY, needs_data, one_line_error

STAGES = [
    {"after": "a", "metrics": {"a": {"ssim": 0.50, "l1": 0.20}}},
    {"after": "b", "metrics": {"a": {"ssim": 0.40, "l1": 0.25}, "b": {"ssim": 0.70, "l1": 0.10}}},
    {"after": "c", "metrics": {"a": {"ssim": 0.45, "l1": 0.30}, "b": {"ssim": 0.75, "l1": 0.05},
                               "c": {"ssim": 0.60, "l1": 0.15}}},
]


def test_matrix_is_lower_triangular_in_training_order():
    tasks, matrix = stage_matrix(STAGES[:2], "ssim")
    assert tasks == ["a", "b"]
    assert matrix == [[0.50, None], [0.40, 0.70]]


def test_forgetting_is_positive_when_a_task_got_worse_for_either_direction():
    _, ssim = stage_matrix(STAGES, "ssim")
    drops = forgetting(ssim, higher_is_better=True)
    assert drops[0] == pytest.approx(0.05)   # best 0.50, final 0.45
    assert drops[1] == pytest.approx(-0.05)  # improved after training c
    assert drops[2] is None                  # the last task has no earlier stage
    _, l1 = stage_matrix(STAGES, "l1")
    drops = forgetting(l1, higher_is_better=False)
    assert drops[0] == pytest.approx(0.10)   # best 0.20, final 0.30: worse
    assert drops[1] == pytest.approx(-0.05)


def test_unrecorded_matrix_metric_is_a_clear_error():
    with pytest.raises(Exception, match="metric 'fid' was not recorded"):
        stage_matrix(STAGES, "fid")


def test_baseline_ratios_cover_tasks_both_models_have():
    ours = {"a": {"ssim": 0.5, "stored": 30}, "b": {"ssim": 0.6, "stored": 10}}
    base = {"a": {"ssim": 0.25, "stored": 100}, "c": {"ssim": 0.9, "stored": 100}}
    assert baseline_ratios(ours, base) == {"a": {"ssim": 2.0, "stored": 0.3}}
    assert baseline_ratios({"a": {"ssim": 0.5, "l1": 0.1}}, {"a": {"ssim": 0.0}}) == {"a": {"ssim": None, "l1": None}}


def train_two_tasks(model, *args):
    from pbgan_core.cli import main

    for task, data in (("facades", FACADES), ("shoes", EDGES2SHOES)):
        code = main(["train", "--arch", "pix2pix", "--task", task, "--data", str(data), "--direction", "BtoA",
                     "--steps", "2", "--model-dir", str(model), *TINY, *args])
        assert code == 0
    return model


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    if not (FACADES.exists() and EDGES2SHOES.exists()):
        pytest.skip("shared data not available")
    return train_two_tasks(tmp_path_factory.mktemp("eval") / "m")


@pytest.fixture(scope="module")
def warm_copy(tmp_path_factory):
    """The same two tasks as full generators, the second fine-tuned from the first."""
    if not (FACADES.exists() and EDGES2SHOES.exists()):
        pytest.skip("shared data not available")
    return train_two_tasks(tmp_path_factory.mktemp("eval") / "warm", "--factorizer", "standalone", "--init", "warm")


@needs_data(FACADES)
def test_eval_json_gives_every_task_and_zero_piggyback_forgetting(cli, two_tasks):
    _, out, _ = cli("eval", "--json", "--model-dir", two_tasks)
    report = json.loads(out)
    assert set(report["metrics"]) == {"facades", "shoes"}
    for values in report["metrics"].values():
        assert set(values) == {"l1", "psnr", "ssim"}
    matrix = report["matrix"]
    assert matrix["tasks"] == ["facades", "shoes"] and matrix["after"] == ["facades", "shoes"]
    assert matrix["values"][0][1] is None and len(matrix["values"]) == 2
    assert matrix["values"][0][0] == matrix["values"][1][0]  # piggyback: bit-identical after task 2
    assert report["forgetting"] == {"facades": 0.0, "shoes": None}
    manifest = json.loads((two_tasks / "manifest.json").read_text())
    assert report["metrics"]["shoes"]["ssim"] == pytest.approx(manifest["stages"][-1]["metrics"]["shoes"]["ssim"],
                                                               abs=1e-4)


@needs_data(FACADES)
def test_eval_one_task_prints_the_matrix(cli, two_tasks):
    _, out, _ = cli("eval", "--task", "shoes", "--metrics", "l1", "--matrix-metric", "l1", "--model-dir", two_tasks)
    assert "shoes" in out and "forgetting" in out and "lower is better" in out.replace("\n", " ")


@needs_data(FACADES)
@pytest.mark.parametrize("metric, flag", [("lpips", "--lpips-weights"), ("fid", "--fid-weights"),
                                          ("kid", "--fid-weights")])
def test_metrics_without_weights_give_one_line(cli, two_tasks, monkeypatch, tmp_path, metric, flag):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.delenv("PBGAN_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("PBGAN_LPIPS_WEIGHTS", raising=False)
    _, _, err = cli("eval", "--metrics", f"l1,{metric}", "--model-dir", two_tasks, expect=1)
    assert flag in one_line_error(err)


@needs_data(FACADES)
def test_eval_unknown_metric_and_missing_model(cli, two_tasks, tmp_path):
    _, _, err = cli("eval", "--metrics", "l1,sharpness", "--model-dir", two_tasks, expect=None)
    assert "unknown metric 'sharpness'" in one_line_error(err)
    _, _, err = cli("eval", "--model-dir", tmp_path / "none", expect=None)
    assert "no pbgan model" in one_line_error(err)


class _Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@needs_data(FACADES)
def test_report_references_images_that_exist(cli, two_tasks, tmp_path):
    out = tmp_path / "report"
    _, printed, _ = cli("report", "--model-dir", two_tasks, "--out", out, "--samples", "2")
    assert "index.html" in printed
    parser = _Sources()
    parser.feed((out / "index.html").read_text())
    assert {"matrix-ssim.png", "params.png", "samples-0001-facades.png", "samples-0002-shoes.png"} <= set(parser.sources)
    for src in parser.sources:
        assert "/" not in src and (out / src).is_file()  # relative: opens from disk
        with Image.open(out / src) as img:
            img.verify()
    with Image.open(out / "samples-0001-facades.png") as grid:  # labels over 2 rows of condition | output | target
        assert grid.size == (3 * 128, 22 + 2 * 128)  # 32 px images shown 4x


@needs_data(FACADES)
@pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None, reason="torchmetrics is not installed")
def test_eval_reports_kid_beside_fid_with_a_stand_in_inception(cli, two_tasks, tmp_path, monkeypatch):
    from pbgan_plugins import metrics as M

    from .test_metrics import StandIn

    weights = tmp_path / M.INCEPTION_FILE
    weights.write_bytes(b"stand-in")
    monkeypatch.setitem(M._cache, ("inception", str(weights)), StandIn())  # in place of torch-fidelity's network
    _, out, _ = cli("eval", "--json", "--metrics", "l1,fid,kid", "--images", "4", "--fid-weights", weights,
                    "--model-dir", two_tasks)
    now = json.loads(out)["metrics"]
    assert set(now) == {"facades", "shoes"}
    for values in now.values():
        assert set(values) == {"l1", "fid", "kid"} and values["fid"] > 0 and math.isfinite(values["kid"])


@needs_data(FACADES)
def test_eval_against_a_warm_copy_gives_ratios_per_task(cli, two_tasks, warm_copy):
    _, out, _ = cli("eval", "--json", "--baseline", warm_copy, "--model-dir", two_tasks)
    report = json.loads(out)
    _, base_out, _ = cli("eval", "--json", "--model-dir", warm_copy)
    base = json.loads(base_out)["metrics"]
    ratios = report["baseline"]["ratios"]
    assert set(ratios) == {"facades", "shoes"}
    for task, values in ratios.items():
        for metric in ("l1", "psnr", "ssim"):
            assert values[metric] == pytest.approx(report["metrics"][task][metric] / base[task][metric])
    assert 0 < ratios["shoes"]["stored"] <= 0.30  # piggyback's later task against a whole generator
    _, printed, _ = cli("eval", "--baseline", warm_copy, "--model-dir", two_tasks)
    assert "ratio to the baseline" in printed and "stored params ratio" in printed


@needs_data(FACADES)
def test_eval_baseline_without_shared_tasks_is_one_line(cli, two_tasks, tmp_path):
    other = tmp_path / "other"
    from pbgan_core.cli import main
    assert main(["train", "--arch", "pix2pix", "--task", "elsewhere", "--data", str(FACADES), "--direction", "BtoA",
                 "--steps", "1", "--model-dir", str(other), *TINY]) == 0
    _, _, err = cli("eval", "--baseline", other, "--model-dir", two_tasks, expect=1)
    assert "no task named like" in one_line_error(err)
    _, _, err = cli("eval", "--baseline", tmp_path / "none", "--model-dir", two_tasks, expect=1)
    assert "no pbgan model" in one_line_error(err)


@needs_data(FACADES)
def test_report_with_a_baseline_has_the_ratio_table(cli, two_tasks, warm_copy, tmp_path):
    out = tmp_path / "report"
    cli("report", "--model-dir", two_tasks, "--out", out, "--samples", "1", "--baseline", warm_copy)
    page = (out / "index.html").read_text()
    assert "Ratio to the baseline" in page and "stored params" in page


@needs_data(FACADES)
def test_report_replaces_a_report_only_with_force_and_writes_in_the_model_only_its_own(cli, two_tasks, tmp_path):
    model = shutil.copytree(two_tasks, tmp_path / "m")
    out = tmp_path / "r"
    cli("report", "--model-dir", model, "--out", out, "--samples", "1")
    (out / "index.html").write_text("mine")
    _, _, err = cli("report", "--model-dir", model, "--out", out, "--samples", "1", expect=1)
    assert f"--out {out} holds a report already; add --force" in one_line_error(err)
    assert (out / "index.html").read_text() == "mine"
    cli("report", "--model-dir", model, "--out", out, "--samples", "1", "--force")
    assert (out / "index.html").read_text() != "mine"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    _, _, err = cli("report", "--model-dir", model, "--out", tmp_path / "notes", "--force", expect=1)
    assert "holds files but no report" in one_line_error(err)
    for inside in (model / "bank" / "r", model / "r"):
        _, _, err = cli("report", "--model-dir", model, "--out", inside, expect=1)
        assert "is inside the model directory" in one_line_error(err) and not inside.exists()
    for _ in range(2):  # MODEL_DIR/report, the default, is the model's own: rewritten each time
        cli("report", "--model-dir", model, "--samples", "1")
    assert (model / "report" / "index.html").is_file()
