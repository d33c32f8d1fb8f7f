"""What a lifelong model remembers: the task-by-stage matrix, forgetting, and an HTML report
(labelled sample grids, loss curves, every metric's task-by-stage heatmap and parameter growth as
PNG and SVG, the tables as CSV and LaTeX)."""
from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image, ImageDraw

from .accounting import task_rows
from .atomic import atomic_write_bytes
from .errors import PbganError
from .figure import Figure, font, text_width
from .images import to_pil
from .protocol import DEFAULT_PROTOCOL, translate
from .store import model_dir_containing

# -----------------------------------------------------------------------------
# the task-by-stage matrix and forgetting (pure functions of manifest["stages"])


def stage_matrix(stages: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[str], list[list[float | None]]]:
    """Tasks in training order and matrix[i][j] = `metric` of task j after training task i
    (None where task j came later). Rows follow `stages`, columns the order tasks first appear."""
    tasks: list[str] = []
    for stage in stages:
        for name in stage["metrics"]:
            if name not in tasks:
                tasks.append(name)
    matrix = []
    for stage in stages:
        row = []
        for name in tasks:
            values = stage["metrics"].get(name)
            if values is not None and metric not in values:
                raise PbganError(f"metric {metric!r} was not recorded during training (recorded: "
                                 f"{', '.join(values)}); choose one of those")
            row.append(None if values is None else float(values[metric]))
        matrix.append(row)
    return tasks, matrix


def forgetting(matrix: Sequence[Sequence[float | None]], higher_is_better: bool) -> list[float | None]:
    """Per task: its best value over the stages before the last, minus its final value, signed so
    that positive means it got worse (Chaudhry et al. 2018). None for the last task or one never
    seen before the final stage."""
    if not matrix:
        return []
    final = matrix[-1]
    result: list[float | None] = []
    for j in range(len(final)):
        earlier = [row[j] for row in matrix[:-1] if row[j] is not None]
        if not earlier or final[j] is None:
            result.append(None)
            continue
        best = max(earlier) if higher_is_better else min(earlier)
        drop = best - final[j] if higher_is_better else final[j] - best
        result.append(drop + 0.0)  # no -0.0
    return result


def baseline_ratios(ours: Mapping[str, Mapping[str, float]],
                    base: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """Per task that both models have: each metric (and `stored`, if given) as a ratio to the
    baseline model's value for the task of the same name, e.g. piggyback against a warm full
    copy. None where the baseline lacks the metric or its value is 0."""
    ratios = {}
    for task, values in ours.items():
        theirs = base.get(task)
        if theirs is None:
            continue
        ratios[task] = {k: (float(v) / float(theirs[k]) if theirs.get(k) else None) for k, v in values.items()}
    return ratios


def require_shared_tasks(ratios: Mapping[str, Any], baseline_root: Path) -> None:
    if not ratios:
        raise PbganError(f"the baseline model {baseline_root} has no task named like this model's tasks; "
                         "give --baseline a model trained on the same task names")


def check_report_folder(out: Path, root: Path, force: bool = False) -> None:
    """A report goes to MODEL_DIR/report (rewritten each time) or to a folder outside any model
    directory that is new or empty, or that holds an earlier report and `force` is given."""
    out = Path(out)
    if out.resolve() == (Path(root) / "report").resolve():
        return
    inside = model_dir_containing(out, root)
    if inside is not None:
        raise PbganError(f"--out {out} is inside the model directory {inside}; write the report outside it, or "
                         "leave out --out for MODEL_DIR/report")
    if out.exists() and not out.is_dir():
        raise PbganError(f"--out {out} is a file; give a folder for the report")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / "index.html").is_file():
        raise PbganError(f"--out {out} holds files but no report (index.html); give a new or empty folder")
    if not force:
        raise PbganError(f"--out {out} holds a report already; add --force to replace it, or give a new folder")


# -----------------------------------------------------------------------------
# the training record: MODEL_DIR/logs/TASK.jsonl, one JSON object per line


def training_log(root: Path, name: str) -> Path:
    return Path(root) / "logs" / f"{name}.jsonl"


def read_steps(path: Path) -> list[dict[str, Any]] | None:
    """The `"event": "step"` records of a training log, in order; None if there is no log. Lines
    that do not parse (a last line torn by a crash) are skipped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    steps = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == "step" and isinstance(record.get("losses"), dict):
            steps.append(record)
    return steps


# -----------------------------------------------------------------------------
# figures (PNG and SVG from one drawing) and tables (CSV and LaTeX)

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194)]


def _write_figure(figure: Figure, out: Path, stem: str) -> str:
    """out/STEM.png and out/STEM.svg; the PNG's name."""
    atomic_write_bytes(out / f"{stem}.png", figure.png())
    atomic_write_bytes(out / f"{stem}.svg", figure.svg())
    return f"{stem}.png"


def _plain(v: Any) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
         "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex(text: str) -> str:
    return "".join(LATEX.get(c, c) for c in text)


def write_tables(out: Path, stem: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    """out/STEM.csv and out/STEM.tex (a booktabs tabular, `-` where a value is missing); their names."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_plain(v) for v in row] for row in rows])
    atomic_write_bytes(out / f"{stem}.csv", buf.getvalue().encode())
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_latex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex(_plain(v) or "-") for v in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    atomic_write_bytes(out / f"{stem}.tex", "\n".join(lines).encode())
    return [f"{stem}.csv", f"{stem}.tex"]


def _shade(t: float) -> tuple[int, int, int]:
    """0 (worst) -> pale yellow, 1 (best) -> dark green."""
    lo, hi = (255, 247, 188), (0, 104, 55)
    return tuple(round(a + (b - a) * t) for a, b in zip(lo, hi))


def draw_heatmap(tasks: list[str], stages: list[str], matrix: list[list[float | None]], metric: str,
                 higher_is_better: bool) -> Figure:
    cell_w, cell_h, top = 96, 34, 66
    label_w = 16 + max([text_width(f"after {s}") for s in stages] + [40])
    title = [f"{metric} of task j (column) after training task i (row)",
             "higher is better" if higher_is_better else "lower is better"]
    width = max(label_w + cell_w * len(tasks), 16 + max(text_width(t) for t in title)) + 12
    fig = Figure(width, top + cell_h * len(stages) + 12)
    for k, line in enumerate(title):
        fig.text(8, 6 + 18 * k, line)
    values = [v for row in matrix for v in row if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    for j, name in enumerate(tasks):
        fig.text(label_w + j * cell_w + 4, top - 20, name if text_width(name) < cell_w - 6 else name[:10] + ".")
    for i, (stage, row) in enumerate(zip(stages, matrix)):
        y = top + i * cell_h
        fig.text(8, y + 10, f"after {stage}")
        for j, v in enumerate(row):
            x = label_w + j * cell_w
            if v is None:
                fig.rect([x, y, x + cell_w - 2, y + cell_h - 2], (235, 235, 235))
                fig.text(x + cell_w // 2 - 3, y + 10, "-", "gray")
                continue
            t = 0.5 if hi == lo or not math.isfinite(v) else (v - lo) / (hi - lo)
            t = t if higher_is_better else 1 - t
            fig.rect([x, y, x + cell_w - 2, y + cell_h - 2], _shade(t))
            fig.text(x + 8, y + 10, f"{v:.4g}", "white" if t > 0.55 else "black")
    return fig


def draw_param_growth(names: list[str], stored: list[int], standalone: int) -> Figure:
    """Bars: parameters each task stored; lines: cumulative stored vs one standalone generator per task."""
    legend = [("stored by the task", (66, 133, 244)), ("cumulative stored", (0, 150, 60)),
              ("one standalone generator per task", (220, 50, 40))]
    legend_w = sum(28 + text_width(label) for label, _ in legend)
    w, h = max(legend_w + 100, 110 * len(names) + 140), 320
    left, right, top, bottom = 80, w - 20, 40, h - 50
    fig = Figure(w, h)
    cumulative = [sum(stored[: k + 1]) for k in range(len(stored))]
    separate = [standalone * (k + 1) for k in range(len(stored))]
    peak = max(cumulative + separate + [1])
    scale = (bottom - top) / peak

    def y_of(v: float) -> float:
        return bottom - v * scale

    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(peak * frac)
        fig.line([(left, y), (right, y)], (225, 225, 225))
        fig.text(6, y - 7, f"{peak * frac / 1e6:.2f}M")
    slot = (right - left) / max(len(names), 1)
    centres = [left + slot * (k + 0.5) for k in range(len(names))]
    for x, name, n in zip(centres, names, stored):
        fig.rect([x - slot * 0.25, y_of(n), x + slot * 0.25, bottom], (66, 133, 244))
        fig.text(x - text_width(name) / 2, bottom + 6, name)
    for series, colour in ((cumulative, (0, 150, 60)), (separate, (220, 50, 40))):
        points = [(x, y_of(v)) for x, v in zip(centres, series)]
        if len(points) > 1:
            fig.line(points, colour, width=3)
        for x, y in points:
            fig.dot(x, y, 4, colour)
    x = left
    for label, colour in legend:
        fig.rect([x, 12, x + 12, 24], colour)
        fig.text(x + 16, 11, label)
        x += 28 + text_width(label)
    fig.line([(left, bottom), (right, bottom)], "black")
    return fig


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: the trend through per-step noise."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def draw_loss_curves(task: str, steps: list[dict[str, Any]]) -> Figure:
    """One panel per loss (each has its own scale): every step faint, a moving average on top."""
    names = list(dict.fromkeys(k for s in steps for k in s["losses"]))
    panel_h, left, right, top = 120, 70, 620, 30
    fig = Figure(right + 20, top + panel_h * len(names) + 30)
    total = steps[-1].get("total", steps[-1]["step"])  # the log holds every --log-every'th step, not all
    fig.text(8, 6, f"{task}: training losses by optimizer step (logged at {len(steps)} of its {total} steps)")
    x_lo, x_hi = steps[0]["step"], max(steps[-1]["step"], steps[0]["step"] + 1)
    window = max(1, len(steps) // 50)
    for k, name in enumerate(names):
        points = [(s["step"], float(s["losses"][name])) for s in steps
                  if name in s["losses"] and math.isfinite(float(s["losses"][name]))]
        y0, y1 = top + k * panel_h + 22, top + (k + 1) * panel_h - 8
        colour = PALETTE[k % len(PALETTE)]
        fig.text(left, y0 - 18, f"{name} (average of {window})" if window > 1 else name, colour)
        fig.line([(left, y0), (left, y1), (right, y1)], "black")
        if not points:
            continue
        lo, hi = min(v for _, v in points), max(v for _, v in points)
        hi = hi if hi > lo else lo + 1.0

        def place(step: float, v: float) -> tuple[float, float]:
            return (left + (step - x_lo) / (x_hi - x_lo) * (right - left), y1 - (v - lo) / (hi - lo) * (y1 - y0))

        fig.text(6, y0 - 6, f"{hi:.4g}")
        fig.text(6, y1 - 12, f"{lo:.4g}")
        faint = tuple(round(c + (255 - c) * 0.7) for c in colour)
        if window > 1:
            fig.line([place(x, v) for x, v in points], faint)
        smooth = _smooth([v for _, v in points], window)
        fig.line([place(x, v) for (x, _), v in zip(points, smooth)], colour, width=2)
    fig.text(left, top + panel_h * len(names) + 6, f"step {x_lo}")
    fig.text(right - text_width(f"step {x_hi}"), top + panel_h * len(names) + 6, f"step {x_hi}")
    return fig


# -----------------------------------------------------------------------------
# sample grids: labelled columns, small images enlarged with their pixels kept sharp

SAMPLE_CELL = 128  # smallest shown side of one image in a grid, in pixels
LABEL_BAND = 22


def grid_columns(arch, direction: str) -> list[str]:
    """Column labels of a task's sample grid."""
    if arch.paired:
        return ["condition", "output", "target"]
    return ["A", "A->B", "A->B->A", "B", "B->A", "B->A->B"]  # unpaired: no target; both ways and back


def labelled_grid(rows: list[list[torch.Tensor]], labels: list[str]) -> Image.Image:
    """Rows of (3, H, W) images in [-1, 1] under a band of column labels."""
    h, w = rows[0][0].shape[-2:]
    factor = max(1, SAMPLE_CELL // min(h, w))
    body = to_pil(torch.cat([torch.cat(row, dim=2) for row in rows], dim=1))
    body = body.resize((body.width * factor, body.height * factor), Image.NEAREST)
    grid = Image.new("RGB", (body.width, body.height + LABEL_BAND), "white")
    grid.paste(body, (0, LABEL_BAND))
    draw, cell = ImageDraw.Draw(grid), w * factor
    for k, label in enumerate(labels):
        draw.text((k * cell + (cell - text_width(label)) / 2, 4), label, fill="black", font=font())
    return grid


@torch.no_grad()
def sample_grid(store, plugins, name: str, count: int = 4, protocol: str = DEFAULT_PROTOCOL,
                data=None) -> Image.Image:
    """Rows for the first `count` test images of a task, columns labelled: condition | output |
    target, or for unpaired tasks each image translated both ways and back (A, A->B, A->B->A, B, ...)."""
    from .engine import eval_split, image_seeds, load_generators

    entry, generators = load_generators(store, plugins, name)
    arch = plugins.architectures.get(entry["arch"])
    data = eval_split(entry, plugins, store.root, data)

    def run(direction: str, x: torch.Tensor, path: str) -> torch.Tensor:
        gname = arch.generator_for(direction)
        return translate(generators[gname], x.unsqueeze(0), protocol, image_seeds(name, gname, [path]))[0]

    rows = []
    for i in range(min(count, len(data))):
        item = data[i]
        if arch.paired:
            source, target = ("A", "B") if entry["direction"] == "AtoB" else ("B", "A")
            path = item.get(f"path_{source}", item["path"])
            rows.append([item[source], run(entry["direction"], item[source], path), item[target]])
            continue
        row = []
        for source, target in (("A", "B"), ("B", "A")):
            path = item.get(f"path_{source}", item["path"])
            there = run(f"{source}to{target}", item[source], path)
            row += [item[source], there, run(f"{target}to{source}", there, path)]
        rows.append(row)
    if not rows:
        raise PbganError(f"task {name!r} has no test images in {entry['data']}; cannot draw samples")
    return labelled_grid(rows, grid_columns(arch, entry["direction"]))


def test_image_counts(store, plugins, names: Sequence[str], limit: int | None = None, data=None) -> dict[str, int]:
    """Test images each task's scores use (`limit` as `pbgan eval --images`; None: the task's own);
    `data` ({task: folder}) where tasks' data is now."""
    from .engine import eval_image_count, eval_split

    return {name: eval_image_count(store.task(name), len(eval_split(store.task(name), plugins, store.root, data)),
                                   limit) for name in names}


def scored_against(entry: Mapping[str, Any], plugins) -> str:
    """What a task's per-image metrics compare its outputs with, in words."""
    if plugins.architectures.get(entry["arch"]).paired:
        return "target"
    source, target = ("A", "B") if entry["direction"] == "AtoB" else ("B", "A")
    return f"round trip {source}->{target}->{source} against the input (fid, kid: the {source}->{target} outputs " \
           f"against domain {target})"


# -----------------------------------------------------------------------------
# the HTML report


def _describe(entry: Mapping[str, Any]) -> str:
    """What the task translates, in words."""
    options = entry.get("options", {})
    if entry.get("dataset") == "derived":
        source = f"condition: {options.get('derive')}, derived from each photo in {entry['data']}"
    else:
        source = f"data: {entry['data']} ({entry.get('dataset')}, {entry['direction']})"
    return f"{entry['arch']}, {source}"


def _cell(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


PROTOCOL_TEXT = {"eval": "eval mode: BatchNorm uses its running statistics, dropout is off",
                 "reference": "as the reference test.py: each image on its own with its own BatchNorm statistics, "
                              "dropout on, seeded per image"}


def recorded_metrics(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metrics recorded for every task at every stage, in the order first recorded."""
    cells = [values for stage in stages for values in stage["metrics"].values()]
    names = list(dict.fromkeys(k for values in cells for k in values))
    return [m for m in names if all(m in values for values in cells)]


def _links(files: list[str]) -> str:
    return " ".join(f"<a href=\"{html.escape(f)}\">{html.escape(f.rsplit('.', 1)[1].upper())}</a>" for f in files)


def build_report(store, plugins, out: Path, metric: str = "ssim", samples: int = 4,
                 protocol: str = DEFAULT_PROTOCOL, baseline=None, data=None) -> Path:
    """Write out/index.html with its figures (PNG, and SVG beside each chart) and tables (CSV,
    LaTeX); every file is referenced relative to the page. `metric`'s task-by-stage matrix comes
    first, then every other recorded metric's. `baseline`, another model's store, adds each
    task's metrics and stored parameters as ratios to that model's task of the same name; `data`
    ({task: folder}) says where tasks' data is now."""
    if not store.tasks:
        raise PbganError(f"{store.root} has no tasks yet; train one before making a report")
    out = Path(out)
    plugins.metrics.get(metric)
    parts = [f"<h1>pbgan model {html.escape(str(store.root))}</h1>",
             f"<p id=\"protocol\">Test-time protocol: <b>{html.escape(protocol)}</b> "
             f"({html.escape(PROTOCOL_TEXT[protocol])}); samples and metrics below use it.</p>"]

    rows, totals = task_rows(store)
    entries = {r["name"]: store.task(r["name"]) for r in rows}
    # samples first: what each task does is seen before it is measured
    parts.append("<h2>Samples</h2>")
    for r in rows:
        entry = entries[r["name"]]
        columns = grid_columns(plugins.architectures.get(entry["arch"]), entry["direction"])
        file = f"samples-{r['index']:04d}-{r['name']}.png"
        grid = sample_grid(store, plugins, r["name"], samples, protocol, data)
        atomic_write_bytes(out / file, _png_bytes(grid))
        parts.append(f"<h3>{html.escape(r['name'])}</h3><p>{html.escape(_describe(entry))}; columns: "
                     f"{html.escape(' | '.join(columns))}</p><img src=\"{html.escape(file)}\" alt=\""
                     f"{html.escape(', '.join(columns))} of {html.escape(r['name'])}\">")

    images = test_image_counts(store, plugins, list(entries), data=data)
    metric_names = sorted({k for r in rows for k in (r["metrics"] or {})})
    parts.append("<h2>Tasks</h2><p>metrics right after training each task, on the number of test images given; "
                 "per-image metrics compare each output with what the last column names</p>" + _table(
        ["#", "task", "arch", "factorizer", "stored params", "x standalone", *metric_names, "test images",
         "scored against"],
        [[r["index"], r["name"], r["arch"], r["factorizer"], f"{r['stored_parameters']:,}",
          f"{r['ratio_to_standalone']:.3f}", *[(r["metrics"] or {}).get(m) for m in metric_names],
          images[r["name"]], scored_against(entries[r["name"]], plugins)] for r in rows]))

    if baseline is not None:
        base_rows, _ = task_rows(baseline)
        ratios = baseline_ratios(
            {r["name"]: {**(r["metrics"] or {}), "stored": r["stored_parameters"]} for r in rows},
            {r["name"]: {**(r["metrics"] or {}), "stored": r["stored_parameters"]} for r in base_rows})
        require_shared_tasks(ratios, baseline.root)
        parts.append(f"<h2>Ratio to the baseline {html.escape(str(baseline.root))}</h2>"
                     "<p>each task's value (right after training it) divided by the baseline's value for the "
                     "task of the same name</p>" + _table(
                         ["task", *metric_names, "stored params"],
                         [[t, *[v.get(m) for m in metric_names], v["stored"]] for t, v in ratios.items()]))

    parts.append("<h2>Training losses</h2>")
    for r in rows:
        log = training_log(store.root, r["name"])
        steps = read_steps(log)
        if not steps:
            why = "no training record" if steps is None else "no steps in the training record"
            parts.append(f"<p class=\"note\">{html.escape(r['name'])}: {why} ({html.escape(str(log))}), so no "
                         "loss curve.</p>")
            continue
        png = _write_figure(draw_loss_curves(r["name"], steps), out, f"losses-{r['index']:04d}-{r['name']}")
        parts.append(f"<h3>{html.escape(r['name'])}</h3><img src=\"{html.escape(png)}\" alt=\"training losses of "
                     f"{html.escape(r['name'])}\"><p>{_links([png.replace('.png', '.svg')])}</p>")

    stages = store.manifest.get("stages", [])
    recorded = recorded_metrics(stages) if stages else []
    unpaired = [n for n, e in entries.items() if not plugins.architectures.get(e["arch"]).paired]
    for name in [metric, *[m for m in recorded if m != metric]] if stages else []:
        known = plugins.metrics.items.get(name)  # a metric whose plugin is gone still has its numbers
        higher = known.higher_is_better if known else True
        tasks, matrix = stage_matrix(stages, name)
        after = [s["after"] for s in stages]
        png = _write_figure(draw_heatmap(tasks, after, matrix, name, higher), out, f"matrix-{name}")
        drops = forgetting(matrix, higher)
        table = [[f"after {a}", *row] for a, row in zip(after, matrix)] + [["forgetting", *drops]]
        files = [png.replace(".png", ".svg"), *write_tables(out, f"matrix-{name}", ["", *tasks], table)]
        parts.append(f"<h2>{html.escape(name)} after each task</h2><img src=\"{html.escape(png)}\" "
                     f"alt=\"{html.escape(name)} matrix\">" + _table(["", *tasks], table) + f"<p>{_links(files)}</p>")
        if unpaired and not getattr(known, "set_level", False):
            parts.append(f"<p>{html.escape(', '.join(unpaired))}: {html.escape(name)} of the round trip (unpaired "
                         "data has no target).</p>")
        measured = [d for d in drops if d is not None]
        if measured:
            worst = max(measured)
            verdict = "zero forgetting" if worst <= 0 else "earlier tasks got worse"
            parts.append(f"<p><b>{verdict}</b>: the largest drop of an earlier task's {html.escape(name)} after "
                         f"later tasks is {worst:.4f}.</p>")

    names, stored = [r["name"] for r in rows], [r["stored_parameters"] for r in rows]
    png = _write_figure(draw_param_growth(names, stored, totals["standalone_parameters"]), out, "params")
    one = totals["standalone_parameters"]
    growth = [[n, s, round(s / one, 4), sum(stored[: k + 1]), one * (k + 1)]
              for k, (n, s) in enumerate(zip(names, stored))]
    files = [png.replace(".png", ".svg"), *write_tables(
        out, "params", ["task", "stored", "x standalone", "cumulative stored", "one standalone per task"], growth)]
    parts.append(f"<h2>Parameters</h2><img src=\"{html.escape(png)}\" alt=\"parameter growth\">"
                 f"<p>{totals['stored_parameters']:,} stored in all, "
                 f"{totals['stored_parameters'] / max(totals['standalone_parameters'], 1):.3f} of one standalone "
                 f"generator; {totals['one_standalone_per_task']:,} for one standalone generator per task. "
                 f"{_links(files)}</p>")

    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{image-rendering:pixelated}"
             ".note{color:#666}")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>pbgan report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    index = out / "index.html"
    atomic_write_bytes(index, page.encode())
    return index


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
