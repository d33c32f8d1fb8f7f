"""The report's figures and tables: loss curves from the training record, every metric's
task-by-stage matrix as PNG, SVG, CSV and LaTeX, labelled sample grids (CycleGAN both ways and
back), and the number of test images behind each score."""
import csv
import json
import math
import xml.etree.ElementTree as ET

import pytest
import torch
from PIL import Image

from pbgan_core.engine import eval_split, load_generators
from pbgan_core.images import to_pil
from pbgan_core.plugins import get_plugins
from pbgan_core.report import draw_loss_curves, read_steps, write_tables
from pbgan_core.store import ModelStore

from .conftest import EDGES2SHOES, FACADES, needs_data
from .test_cyclegan import SMALL, make_unpaired
from .test_eval_report import two_tasks  # noqa: F401  (the module-scoped two-task model)

pytestmark = needs_data(FACADES)


def write_log(path, steps=120, torn=True):
    """A training record as training writes it: other events around the steps, a torn last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"event": "start", "task": path.stem})]
    for s in range(1, steps + 1):
        lines.append(json.dumps({"event": "step", "step": s, "total": steps, "epoch": s // 10, "lr": 2e-4,
                                 "losses": {"G_GAN": 0.7 + 0.1 * math.sin(s), "G_L1": 30 * math.exp(-s / 40)},
                                 "time": 0.1 * s}))
    lines.append(json.dumps({"event": "end"}))
    text = "\n".join(lines) + "\n" + ('{"event": "step", "step": 121, "los' if torn else "")
    path.write_text(text)


def test_read_steps_keeps_step_records_and_skips_a_torn_last_line(tmp_path):
    write_log(tmp_path / "t.jsonl", steps=5)
    steps = read_steps(tmp_path / "t.jsonl")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    assert set(steps[0]["losses"]) == {"G_GAN", "G_L1"}
    assert read_steps(tmp_path / "missing.jsonl") is None


def test_loss_figure_title_says_how_many_of_the_steps_were_logged():
    steps = [{"step": s, "total": 400, "losses": {"G_L1": 1.0 / s}} for s in (1, *range(10, 401, 10))]
    titles = [op[2] for op in draw_loss_curves("shoes", steps).ops if op[0] == "text"]
    assert "shoes: training losses by optimizer step (logged at 41 of its 400 steps)" in titles


def test_latex_tables_escape_names_and_mark_missing_values(tmp_path):
    write_tables(tmp_path, "t", ["", "edges_2 & 50%"], [["after x_y", None], ["forgetting", 0.5]])
    tex = (tmp_path / "t.tex").read_text()
    assert " & edges\\_2 \\& 50\\% \\\\" in tex and "after x\\_y & - \\\\" in tex
    assert list(csv.reader((tmp_path / "t.csv").open()))[1] == ["after x_y", ""]


def svg_root(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return root


@needs_data(EDGES2SHOES)
def test_report_has_loss_curves_every_matrix_and_tables(cli, two_tasks, tmp_path):  # noqa: F811
    logs = two_tasks / "logs"
    write_log(logs / "facades.jsonl")
    (logs / "shoes.jsonl").unlink(missing_ok=True)
    out = tmp_path / "report"
    cli("report", "--model-dir", two_tasks, "--out", out, "--samples", "2")
    page = (out / "index.html").read_text()

    assert 'src="losses-0001-facades.png"' in page
    polylines = [e for e in svg_root(out / "losses-0001-facades.svg").iter() if e.tag.endswith("polyline")]
    assert len(polylines) >= 2  # a curve per loss
    with Image.open(out / "losses-0001-facades.png") as img:
        assert img.width > 300
    assert "shoes: no training record" in page and "no loss curve" in page

    for metric in ("l1", "psnr", "ssim"):
        assert f'src="matrix-{metric}.png"' in page
        svg_root(out / f"matrix-{metric}.svg")
        rows = list(csv.reader((out / f"matrix-{metric}.csv").open()))
        assert rows[0] == ["", "facades", "shoes"]
        assert [r[0] for r in rows[1:]] == ["after facades", "after shoes", "forgetting"]
        assert rows[1][2] == "" and float(rows[1][1]) == float(rows[2][1])  # facades unchanged after shoes
        tex = (out / f"matrix-{metric}.tex").read_text()
        assert tex.startswith("\\begin{tabular}{lrr}") and "after facades &" in tex and "\\bottomrule" in tex
    assert page.index("matrix-ssim.png") < page.index("matrix-l1.png")  # the chosen metric first

    growth = list(csv.reader((out / "params.csv").open()))
    assert growth[0] == ["task", "stored", "x standalone", "cumulative stored", "one standalone per task"]
    stored = [int(r[1]) for r in growth[1:]]
    assert [int(r[3]) for r in growth[1:]] == [stored[0], stored[0] + stored[1]]
    assert (out / "params.tex").read_text().startswith("\\begin{tabular}{lrrrr}")
    svg_root(out / "params.svg")

    with Image.open(out / "samples-0001-facades.png") as grid:
        assert grid.size == (3 * 128, 22 + 2 * 128)
    assert "columns: condition | output | target" in page
    assert "<td>4</td><td>target</td>" in page  # 4 test images (--eval-images 4), scored against the target


def test_eval_says_how_many_test_images_each_score_used(cli, two_tasks):  # noqa: F811
    _, out, _ = cli("eval", "--images", "3", "--metrics", "l1", "--model-dir", two_tasks)
    assert "test images" in out
    _, out, _ = cli("eval", "--json", "--metrics", "l1", "--model-dir", two_tasks)
    report = json.loads(out)
    assert report["images"] == {"facades": 4, "shoes": 4}  # the tasks' --eval-images
    assert report["scored_against"] == {"facades": "target", "shoes": "target"}


@pytest.fixture(scope="module")
def cyclegan_model(tmp_path_factory):
    from pbgan_core.cli import main

    root = tmp_path_factory.mktemp("cyc")
    data = make_unpaired(root / "data", train=4, test=2, size=32)
    model = root / "m"
    torch.set_num_threads(1)
    code = main(["train", "--arch", "cyclegan", "--task", "e2s", "--data", str(data), "--steps", "1",
                 "--model-dir", str(model), *SMALL])
    assert code == 0
    return model


@needs_data(EDGES2SHOES)
def test_cyclegan_samples_show_both_directions_and_round_trips(cli, cyclegan_model, tmp_path):
    out = tmp_path / "report"
    cli("report", "--model-dir", cyclegan_model, "--out", out, "--samples", "1")
    page = (out / "index.html").read_text()
    assert "columns: A | A-&gt;B | A-&gt;B-&gt;A | B | B-&gt;A | B-&gt;A-&gt;B" in page
    assert "round trip A-&gt;B-&gt;A against the input" in page and "target |" not in page

    store, plugins = ModelStore(cyclegan_model), get_plugins()
    entry, gens = load_generators(store, plugins, "e2s")
    item = eval_split(entry, plugins)[0]
    with torch.no_grad():
        a, b = item["A"][None], item["B"][None]
        ab, ba = gens["G_A"](a), gens["G_B"](b)
        expected = to_pil(torch.cat([a, ab, gens["G_B"](ab), b, ba, gens["G_A"](ba)], dim=3)[0])
    expected = expected.resize((expected.width * 4, expected.height * 4), Image.NEAREST)
    with Image.open(out / "samples-0001-e2s.png") as grid:
        assert grid.size == (6 * 128, 22 + 128)
        body = grid.convert("RGB").crop((0, 22, grid.width, grid.height))
        assert torch.equal(torch.tensor(list(body.getdata())), torch.tensor(list(expected.getdata())))


@needs_data(EDGES2SHOES)
def test_cyclegan_eval_names_its_round_trip_metrics(cli, cyclegan_model):
    _, out, _ = cli("eval", "--metrics", "l1,psnr", "--model-dir", cyclegan_model)
    assert "e2s: per-image metrics score the round trip A->B->A against the input" in out.replace("\n", " ")
    _, out, _ = cli("eval", "--json", "--metrics", "l1", "--model-dir", cyclegan_model)
    assert json.loads(out)["images"] == {"e2s": 2}
