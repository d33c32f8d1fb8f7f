"""What a lifelong model remembers: the task-by-stage matrix, forgetting, and an HTML report
(sample grids, metrics, a heatmap and a parameter-growth chart drawn with PIL)."""
from __future__ import annotations

import html
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .accounting import task_rows
from .atomic import atomic_write_bytes
from .errors import PbganError
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
# drawing with PIL


def _png(image: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has one fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _shade(t: float) -> tuple[int, int, int]:
    """0 (worst) -> pale yellow, 1 (best) -> dark green."""
    lo, hi = (255, 247, 188), (0, 104, 55)
    return tuple(round(a + (b - a) * t) for a, b in zip(lo, hi))


def draw_heatmap(tasks: list[str], stages: list[str], matrix: list[list[float | None]], metric: str,
                 higher_is_better: bool) -> Image.Image:
    font, cell_w, cell_h = _font(), 96, 34
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 16 + max([_text_width(probe, f"after {s}", font) for s in stages] + [40])
    title = [f"{metric} of task j (column) after training task i (row)",
             "higher is better" if higher_is_better else "lower is better"]
    top = 66
    width = max(label_w + cell_w * len(tasks), 16 + max(_text_width(probe, t, font) for t in title)) + 12
    img = Image.new("RGB", (width, top + cell_h * len(stages) + 12), "white")
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(title):
        draw.text((8, 6 + 18 * k), line, fill="black", font=font)
    values = [v for row in matrix for v in row if v is not None and math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    for j, name in enumerate(tasks):
        x = label_w + j * cell_w
        short = name if _text_width(draw, name, font) < cell_w - 6 else name[:10] + "."
        draw.text((x + 4, top - 20), short, fill="black", font=font)
    for i, (stage, row) in enumerate(zip(stages, matrix)):
        y = top + i * cell_h
        draw.text((8, y + 10), f"after {stage}", fill="black", font=font)
        for j, v in enumerate(row):
            x = label_w + j * cell_w
            if v is None:
                draw.rectangle([x, y, x + cell_w - 2, y + cell_h - 2], fill=(235, 235, 235))
                draw.text((x + cell_w // 2 - 3, y + 10), "-", fill="gray", font=font)
                continue
            t = 0.5 if hi == lo or not math.isfinite(v) else (v - lo) / (hi - lo)
            t = t if higher_is_better else 1 - t
            draw.rectangle([x, y, x + cell_w - 2, y + cell_h - 2], fill=_shade(t))
            draw.text((x + 8, y + 10), f"{v:.4g}", fill="white" if t > 0.55 else "black", font=font)
    return img


def draw_param_growth(names: list[str], stored: list[int], standalone: int) -> Image.Image:
    """Bars: parameters each task stored; lines: cumulative stored vs one standalone generator per task."""
    legend = [("stored by the task", (66, 133, 244)), ("cumulative stored", (0, 150, 60)),
              ("one standalone generator per task", (220, 50, 40))]
    font, probe = _font(), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = sum(28 + _text_width(probe, label, font) for label, _ in legend)
    w, h = max(legend_w + 100, 110 * len(names) + 140), 320
    left, right, top, bottom = 80, w - 20, 40, h - 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    cumulative = [sum(stored[: k + 1]) for k in range(len(stored))]
    separate = [standalone * (k + 1) for k in range(len(stored))]
    peak = max(cumulative + separate + [1])
    scale = (bottom - top) / peak

    def y_of(v: float) -> float:
        return bottom - v * scale

    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(peak * frac)
        draw.line([left, y, right, y], fill=(225, 225, 225))
        draw.text((6, y - 7), f"{peak * frac / 1e6:.2f}M", fill="black", font=font)
    slot = (right - left) / max(len(names), 1)
    centres = [left + slot * (k + 0.5) for k in range(len(names))]
    for k, (name, n) in enumerate(zip(names, stored)):
        x = centres[k]
        draw.rectangle([x - slot * 0.25, y_of(n), x + slot * 0.25, bottom], fill=(66, 133, 244))
        draw.text((x - _text_width(draw, name, font) / 2, bottom + 6), name, fill="black", font=font)
    for series, colour in ((cumulative, (0, 150, 60)), (separate, (220, 50, 40))):
        points = [(x, y_of(v)) for x, v in zip(centres, series)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    x = left
    for label, colour in legend:
        draw.rectangle([x, 12, x + 12, 24], fill=colour)
        draw.text((x + 16, 11), label, fill="black", font=font)
        x += 28 + _text_width(draw, label, font)
    draw.line([left, bottom, right, bottom], fill="black")
    return img


@torch.no_grad()
def sample_grid(store, plugins, name: str, count: int = 4, protocol: str = DEFAULT_PROTOCOL,
                data=None) -> Image.Image:
    """Rows of condition | output | target for the first `count` test images of a task."""
    from .engine import eval_split, image_seeds, load_generators

    entry, generators = load_generators(store, plugins, name)
    arch = plugins.architectures.get(entry["arch"])
    gname = arch.generator_for(entry["direction"])
    gen = generators[gname]
    source, target = ("A", "B") if entry["direction"] == "AtoB" else ("B", "A")
    data = eval_split(entry, plugins, store.root, data)
    rows = []
    for i in range(min(count, len(data))):
        item = data[i]
        path = item.get(f"path_{source}", item["path"])
        fake = translate(gen, item[source].unsqueeze(0), protocol, image_seeds(name, gname, [path]))[0]
        rows.append(torch.cat([item[source], fake, item[target]], dim=2))
    if not rows:
        raise PbganError(f"task {name!r} has no test images in {entry['data']}; cannot draw samples")
    return to_pil(torch.cat(rows, dim=1))


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


def build_report(store, plugins, out: Path, metric: str = "ssim", samples: int = 4,
                 protocol: str = DEFAULT_PROTOCOL, baseline=None, data=None) -> Path:
    """Write out/index.html and its PNGs; every image is referenced relative to the page.
    `baseline`, another model's store, adds each task's metrics and stored parameters as
    ratios to that model's task of the same name; `data` ({task: folder}) where tasks' data is now."""
    if not store.tasks:
        raise PbganError(f"{store.root} has no tasks yet; train one before making a report")
    out = Path(out)
    higher = plugins.metrics.get(metric).higher_is_better
    parts = [f"<h1>pbgan model {html.escape(str(store.root))}</h1>",
             f"<p id=\"protocol\">Test-time protocol: <b>{html.escape(protocol)}</b> "
             f"({html.escape(PROTOCOL_TEXT[protocol])}); samples and metrics below use it.</p>"]

    rows, totals = task_rows(store)
    # samples first: what each task does is seen before it is measured
    parts.append("<h2>Samples: condition | output | target</h2>")
    for r in rows:
        file = f"samples-{r['index']:04d}-{r['name']}.png"
        grid = sample_grid(store, plugins, r["name"], samples, protocol, data)
        _png(grid, out / file)
        width = grid.width * max(1, 576 // grid.width)  # small images shown larger, pixels kept sharp
        parts.append(f"<h3>{html.escape(r['name'])}</h3><p>{html.escape(_describe(store.task(r['name'])))}</p>"
                     f"<img src=\"{html.escape(file)}\" width=\"{width}\" alt=\"condition, output and target "
                     f"of {html.escape(r['name'])}\">")

    metric_names = sorted({k for r in rows for k in (r["metrics"] or {})})
    parts.append("<h2>Tasks</h2>" + _table(
        ["#", "task", "arch", "factorizer", "stored params", "x standalone", *metric_names],
        [[r["index"], r["name"], r["arch"], r["factorizer"], f"{r['stored_parameters']:,}",
          f"{r['ratio_to_standalone']:.3f}", *[(r["metrics"] or {}).get(m) for m in metric_names]] for r in rows]))

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

    stages = store.manifest.get("stages", [])
    if stages:
        tasks, matrix = stage_matrix(stages, metric)
        after = [s["after"] for s in stages]
        _png(draw_heatmap(tasks, after, matrix, metric, higher), out / "matrix.png")
        drops = forgetting(matrix, higher)
        parts.append(f"<h2>{html.escape(metric)} after each task</h2><img src=\"matrix.png\" alt=\"matrix\">")
        parts.append(_table(["", *tasks], [[f"after {a}", *row] for a, row in zip(after, matrix)]
                            + [["forgetting", *drops]]))
        measured = [d for d in drops if d is not None]
        if measured:
            worst = max(measured)
            verdict = "zero forgetting" if worst <= 0 else "earlier tasks got worse"
            parts.append(f"<p><b>{verdict}</b>: the largest drop of an earlier task's {html.escape(metric)} after "
                         f"later tasks is {worst:.4f}.</p>")

    names = [r["name"] for r in rows]
    _png(draw_param_growth(names, [r["stored_parameters"] for r in rows], totals["standalone_parameters"]),
         out / "params.png")
    parts.append("<h2>Parameters</h2><img src=\"params.png\" alt=\"parameter growth\">"
                 f"<p>{totals['stored_parameters']:,} stored in all, "
                 f"{totals['stored_parameters'] / max(totals['standalone_parameters'], 1):.3f} of one standalone "
                 f"generator; {totals['one_standalone_per_task']:,} for one standalone generator per task.</p>")

    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{image-rendering:pixelated}")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>pbgan report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    index = out / "index.html"
    atomic_write_bytes(index, page.encode())
    return index
