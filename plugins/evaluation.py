"""`pbgan eval` (metrics now, the task-by-stage matrix and forgetting) and `pbgan report`
(an HTML page with samples, metrics, a heatmap and parameter growth)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

from pbgan_core.hookspecs import hookimpl


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def moved_data(values: list[str] | None) -> dict[str, Path]:
    """`--data TASK=PATH` options as {task: path}."""
    from pbgan_core.errors import UsageError

    moved = {}
    for value in values or []:
        task, sep, path = value.partition("=")
        if not sep or not task or not path:
            raise UsageError(f"--data expects TASK=PATH (the task's data in its new place), got {value!r}")
        moved[task] = Path(path)
    return moved


DATA_HELP = ("TASK=PATH: the data of TASK is now in PATH (repeatable) [default: found beside the model, as when "
             "it was trained, or where it was]")


@hookimpl
def register_commands(cli):
    import typer
    from rich.table import Table

    from pbgan_core.api import Model
    from pbgan_core.cli import ModelDir, ProtocolOption
    from pbgan_core.console import console, keep_numbers_whole
    from pbgan_core.lock import ModelInUse
    from pbgan_core.protocol import check_protocol
    from pbgan_core.report import baseline_ratios, require_shared_tasks, scored_against, test_image_counts

    @cli.command("eval")
    def eval_cmd(
        task: Optional[str] = typer.Option(None, "--task", help="Only this task [default: every task]"),
        metrics: str = typer.Option("l1,psnr,ssim", "--metrics", help="Comma-separated metric names "
                                    "(see list-plugins); fid, kid and lpips need pbgan[metrics] and their weights"),
        matrix_metric: str = typer.Option("ssim", "--matrix-metric", help="Metric of the task-by-stage "
                                          "matrix and forgetting (one recorded during training)"),
        images: Optional[int] = typer.Option(None, "--images", min=0, help="Test images per task (0: all) "
                                             "[default: the task's --eval-images]"),
        fid_weights: Optional[Path] = typer.Option(None, "--fid-weights", help="torch-fidelity Inception weights "
                                                   "for fid and kid [default: $PBGAN_FID_WEIGHTS, then the torch hub "
                                                   "cache]"),
        lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help="torchvision AlexNet "
                                                     "weights for lpips [default: $PBGAN_LPIPS_WEIGHTS, then the torch "
                                                     "hub cache]"),
        protocol: str = ProtocolOption,
        baseline: Optional[Path] = typer.Option(None, "--baseline", help="Another model directory (e.g. a "
                                                "warm full copy: --factorizer standalone --init warm) trained on "
                                                "the same task names: also show each metric as a ratio to it"),
        json_out: bool = typer.Option(False, "--json", help="Print JSON"),
        data: Optional[list[str]] = typer.Option(None, "--data", help=DATA_HELP),
        model_dir: Optional[Path] = ModelDir,
    ) -> None:
        """Record any metrics row an interrupted training left out, score every task (or one) on
        its test split now, then show how each task's metric moved
        as later tasks were trained (rows: after training task i; columns: task j) and its
        forgetting (best earlier value minus final value; positive = got worse).

        Example: pbgan eval --metrics l1,psnr,ssim --model-dir pbgan-model
        """
        model = Model.open(model_dir)
        check_protocol(protocol)
        moved = model.check_data(moved_data(data))
        names = [m.strip() for m in metrics.split(",") if m.strip()]
        model.check_metrics(names)
        model.plugins.metrics.get(matrix_metric)
        recorded = []
        try:
            recorded = model.record_missing_stages(moved)
        except ModelInUse as exc:
            warnings.warn(f"the missing metrics rows were not recorded ({exc})", stacklevel=1)
        if recorded and not json_out:
            console.print(f"recorded the missing metrics row after: {', '.join(recorded)}", markup=False)
        now = model.evaluate(task, names, images, fid_weights=fid_weights, lpips_weights=lpips_weights,
                             protocol=protocol, data=moved)
        ratios = None
        if baseline is not None:
            base = Model.open(baseline)
            base_stored = {t.name: t.params["stored"] for t in base.tasks}
            ratios = baseline_ratios(
                {t: {**v, "stored": model.task(t).params["stored"]} for t, v in now.items()},
                {t: {**base.evaluate(t, names, images, fid_weights=fid_weights, lpips_weights=lpips_weights,
                                     protocol=protocol, data={t: moved[t]} if t in moved else None)[t],
                     "stored": base_stored[t]}
                 for t in now if t in base_stored})
            require_shared_tasks(ratios, base.root)
        history = model.history(matrix_metric)
        stages, tasks, matrix, drops = (model.store.manifest.get("stages", []), history["tasks"], history["values"],
                                        history["forgetting"])
        higher = history["higher_is_better"]
        protocols = [s.get("protocol", "eval") for s in stages]  # stages before protocols existed ran in eval mode
        counts = test_image_counts(model.store, model.plugins, list(now), images, moved)
        against = {t: scored_against(model.store.task(t), model.plugins) for t in now}
        if json_out:
            print(json.dumps({"model_dir": str(model.root), "recorded_rows_after": recorded, "protocol": protocol,
                              "metrics": now, "images": counts, "scored_against": against,
                              "matrix": {**{k: history[k] for k in ("metric", "higher_is_better", "tasks", "after",
                                                                    "values")}, "protocols": protocols},
                              "forgetting": drops,
                              **({"baseline": {"model_dir": str(baseline), "ratios": ratios}} if ratios else {})},
                             indent=2))
            return
        table = Table(title=f"metrics now ({model.root}), protocol {protocol}")
        table.add_column("task")
        for name in names:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("test images", justify="right", no_wrap=True)
        for t, values in now.items():
            table.add_row(t, *[_fmt(values[n]) for n in names], str(counts[t]))
        console.print(keep_numbers_whole(table))
        for t, text in against.items():
            if text != "target":
                console.print(f"{t}: per-image metrics score the {text}", markup=False)
        if ratios:
            compared = Table(title=f"ratio to the baseline {baseline}")
            compared.add_column("task")
            for name in [*names, "stored"]:
                compared.add_column(f"{name} ratio" if name != "stored" else "stored params ratio", justify="right",
                                    no_wrap=True)
            for t, values in ratios.items():
                compared.add_row(t, *[_fmt(values[n]) for n in [*names, "stored"]])
            console.print(keep_numbers_whole(compared))
        if not stages:
            return
        grid = Table(title=f"{matrix_metric} after each task, recorded under protocol "
                           f"{', '.join(dict.fromkeys(protocols))}")
        grid.add_column("after")
        for t in tasks:
            grid.add_column(t, justify="right", no_wrap=True)
        for stage, row in zip(stages, matrix):
            grid.add_row(stage["after"], *[_fmt(v) for v in row])
        grid.add_row("forgetting", *[_fmt(drops[t]) for t in tasks], style="bold")
        console.print(keep_numbers_whole(grid))
        console.print(f"rows: after training task i; columns: task j; {'higher' if higher else 'lower'} is better; "
                      "forgetting: best earlier value minus the final one, positive = got worse")

    @cli.command("report")
    def report_cmd(
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder outside the model directory "
                                           "[default: MODEL_DIR/report]"),
        force: bool = typer.Option(False, "--force", help="Replace an earlier report in the --out folder"),
        metric: str = typer.Option("ssim", "--metric", help="Metric of the task-by-stage heatmap"),
        samples: int = typer.Option(4, "--samples", min=1, help="Test images per task in the sample grids"),
        protocol: str = ProtocolOption,
        baseline: Optional[Path] = typer.Option(None, "--baseline", help="Another model directory trained on the "
                                                "same task names (e.g. a warm full copy): add each task's metrics "
                                                "and stored parameters as ratios to it"),
        data: Optional[list[str]] = typer.Option(None, "--data", help=DATA_HELP),
        model_dir: Optional[Path] = ModelDir,
    ) -> None:
        """Write an HTML report (index.html and PNGs, opens from disk): sample grids
        (condition | output | target), metrics, the task-by-stage heatmap and parameter growth.

        Example: pbgan report --model-dir pbgan-model
        """
        index = Model.open(model_dir).report(out, metric, samples, protocol, baseline, force,
                                             data=moved_data(data))
        console.print(f"wrote {index}")
