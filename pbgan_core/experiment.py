"""`pbgan run EXPERIMENT.toml`: a whole lifelong experiment in one file.

    model_dir = "runs/three"            # relative paths resolve against the file's folder
    methods = ["piggyback", "standalone-warm"]   # optional: each (method, seed) in MODEL_DIR/METHOD-seedN
    seeds = [0, 1]
    [defaults]                          # any `pbgan train` option, spelled as its flag without dashes
    arch = "pix2pix"
    size = 32
    [[task]]
    name = "facades"
    data = "../shared/data/facades"
    direction = "BtoA"

Every task is trained by `api.train`, in order; running the file again continues it: stored tasks
are skipped (their stored options must still match the file) and an interrupted task resumes from
its checkpoint. The end is a comparison of the methods (ratios to the warm full copy, mean and
spread over seeds) and each model's HTML report.
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from . import api
from .atomic import atomic_write_bytes
from .checkpoint import checkpoint_path
from .engine import RESUME_MAY_CHANGE, Interrupted, inherit_generator, task_options
from .errors import PbganError
from .options import _by_name
from .plugins import get_plugins
from .store import ModelStore, stored_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# method name -> the `pbgan train` options that make it
METHODS = {
    "piggyback": {"factorizer": "piggyback"},
    "standalone": {"factorizer": "standalone"},
    "standalone-warm": {"factorizer": "standalone", "init": "warm"},  # the warm full copy a user would keep
    "finetune": {"factorizer": "finetune"},
    "lowrank": {"factorizer": "lowrank"},
    "mask": {"factorizer": "mask"},
}
BASELINE = "standalone-warm"
METRICS = ("psnr", "ssim", "l1")
TOP_KEYS = ("model_dir", "methods", "seeds", "defaults", "task")
# `pbgan train` options that are not plugins' (keyword arguments of api.train_request)
CORE_KEYS = ("arch", "data", "direction", "size", "steps", "epochs", "epochs_decay", "batch_size", "factorizer",
             "dataset", "derive", "device", "seed", "checkpoint_every", "precision")
# options that say how to train, not what the task is: they may change between runs of the file
HOW = (*RESUME_MAY_CHANGE, "device", "checkpoint_every", "precision")


@dataclass
class Experiment:
    path: Path
    model_dir: Path
    methods: list[str] | None  # None: the one model the options name, in model_dir itself
    seeds: list[int] | None
    tasks: list[dict[str, Any]]  # {"name": ..., option key: value} with [defaults] merged in

    @property
    def runs(self) -> list[tuple[str, int, Path]]:
        """(method, seed, model directory) of every model, seed by seed."""
        if self.methods is None and self.seeds is None:
            return [(_method_of(self.tasks[0]), int(self.tasks[0].get("seed", 0)), self.model_dir)]
        methods = self.methods or [_method_of(self.tasks[0])]
        return [(m, s, self.model_dir / f"{m}-seed{s}") for s in self.seeds or [0] for m in methods]

    @property
    def results_stem(self) -> Path:
        """Where the comparison's CSV and JSON go (.csv, .json): beside the models."""
        if self.methods is None and self.seeds is None:
            return self.model_dir.parent / f"{self.model_dir.name}-results"
        return self.model_dir / "results"


def _method_of(options: Mapping[str, Any]) -> str:
    wanted = {"factorizer": options.get("factorizer", "piggyback"), **({"init": "warm"} if options.get("init") ==
                                                                       "warm" else {})}
    return next((m for m, opts in METHODS.items() if opts == wanted), wanted["factorizer"])


def _key(name: str) -> str:
    return name.replace("-", "_")


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file: unknown keys and option values are one-line errors
    naming the key and its table, before anything trains."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PbganError(f"cannot read the experiment file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PbganError(f"{path} is not a text file (TOML is UTF-8 text); give the experiment file") from None
    except tomllib.TOMLDecodeError as exc:
        raise PbganError(f"{path} is not valid TOML ({exc}); fix the file") from None
    for key in doc:
        if key not in TOP_KEYS:
            raise PbganError(f"unknown key {key!r} at the top of {path}; known: {', '.join(TOP_KEYS)}")
    if "model_dir" not in doc or not isinstance(doc["model_dir"], str):
        raise PbganError(f"{path} needs model_dir = \"FOLDER\" at the top (where the models go)")
    tasks = doc.get("task")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise PbganError(f"{path} has no [[task]] tables; add one per task, each with a name")
    raw_defaults = _table(doc.get("defaults", {}), "[defaults]", path)
    defaults = {_key(k): v for k, v in raw_defaults.items()}
    methods, seeds = doc.get("methods"), doc.get("seeds")
    if methods is not None:
        if not isinstance(methods, list) or not methods or any(m not in METHODS for m in methods):
            raise PbganError(f"methods in {path} must be a list of {', '.join(METHODS)}; got {methods!r}")
        for key in ("factorizer", "init"):
            if key in defaults or any(key in t for t in tasks):
                raise PbganError(f"{key} is set by methods in {path}; remove it from [defaults] and [[task]]")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise PbganError(f"seeds in {path} must be a list of whole numbers, e.g. [0, 1, 2]; got {seeds!r}")
        if "seed" in defaults or any("seed" in t for t in tasks):
            raise PbganError(f"seed is set by seeds in {path}; remove it from [defaults] and [[task]]")
    merged = []
    for i, task in enumerate(tasks):
        name = task.get("name")
        if not isinstance(name, str):
            raise PbganError(f"[[task]] number {i + 1} in {path} has no name = \"...\"")
        if any(t["name"] == name for t in merged):
            raise PbganError(f"two [[task]] tables in {path} are named {name!r}; give each task its own name")
        options = {_key(k): v for k, v in _table(task, f"[[task]] {name!r}", path).items() if k != "name"}
        merged.append({"name": name, **_resolve_data({**defaults, **options}, path.parent)})
    experiment = Experiment(path, Path(os.path.normpath(path.parent / doc["model_dir"])), methods, seeds, merged)
    _check_keys(experiment, raw_defaults, tasks)
    for method, seed, model_dir in experiment.runs:  # option values and names, as `pbgan train` checks them
        for task in experiment.tasks:
            train_kwargs(experiment, task, method, seed, model_dir, first=task is experiment.tasks[0])
    return experiment


def _table(value: Any, where: str, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PbganError(f"{where} in {path} must be a table of options")
    for key, v in value.items():
        if isinstance(v, (dict, list)):
            raise PbganError(f"key {key!r} in {where} of {path} must be a single value")
    return value


def _resolve_data(options: dict[str, Any], folder: Path) -> dict[str, Any]:
    if isinstance(options.get("data"), str):
        options["data"] = os.path.normpath(folder / options["data"])
    return options


def _tables(task: Mapping[str, Any], factorizers: list[str], plugins) -> dict[str, Any]:
    """The plugin options `pbgan train` takes for this task, under any of these factorizers."""
    known = {}
    for factorizer in factorizers:
        table, _ = api.train_options(task.get("arch") or "pix2pix", factorizer, task.get("dataset"),
                                     task.get("derive"), plugins)
        known.update(_by_name(table))
    return known


def _check_keys(experiment: Experiment, defaults: Mapping[str, Any], tasks: list[dict[str, Any]]) -> None:
    plugins = get_plugins()
    factorizers = sorted({METHODS.get(m, {}).get("factorizer", m) for m, _, _ in experiment.runs})
    every = {}
    for task, raw in zip(experiment.tasks, tasks):
        known = _tables(task, factorizers, plugins)
        every.update(known)
        for key in raw:
            if key != "name" and _key(key) not in CORE_KEYS and _key(key).lower() not in known:
                raise _unknown(key, f"[[task]] {task['name']!r}", experiment.path)
    for key in defaults:
        if _key(key) not in CORE_KEYS and _key(key).lower() not in every:
            raise _unknown(key, "[defaults]", experiment.path)


def _unknown(key: str, where: str, path: Path) -> PbganError:
    return PbganError(f"unknown key {key!r} in {where} of {path}; keys are `pbgan train` options spelled "
                      "without dashes (see `pbgan train --help`)")


def train_kwargs(experiment: Experiment, task: Mapping[str, Any], method: str, seed: int, model_dir: Path,
                 first: bool = False) -> dict[str, Any]:
    """api.train's keyword arguments for one task of one model; checks them as `pbgan train` does."""
    options = {k: v for k, v in task.items() if k != "name"}
    if experiment.methods is not None or experiment.seeds is not None:
        options.update(METHODS.get(method, {}), seed=seed)
    factorizer = options.get("factorizer", "piggyback")
    known = _tables(options, [factorizer], get_plugins())
    kwargs = {k: v for k, v in options.items() if k in CORE_KEYS or k.lower() in known}
    kwargs.update(task=task["name"], model_dir=model_dir)
    if first and "arch" not in kwargs and not ModelStore(model_dir).tasks:
        raise PbganError(f"arch is missing in {experiment.path}: give it in [defaults], e.g. arch = \"pix2pix\"")
    api.train_request(**{k: v for k, v in kwargs.items() if k not in ("arch", "task", "data")},
                      arch=kwargs.get("arch"), task=task["name"], data=kwargs.get("data", "."))
    return kwargs


def check_unchanged(experiment: Experiment, model_dir: Path, kwargs: Mapping[str, Any]) -> None:
    """A stored task must still be what the file asks for: every option that made it, named where
    one differs."""
    plugins = get_plugins()
    store = ModelStore(model_dir)
    entry = store.task(kwargs["task"])
    request = api.train_request(**{k: v for k, v in kwargs.items() if k not in ("arch", "task", "data")},
                                arch=kwargs.get("arch"), task=kwargs["task"], data=kwargs.get("data", "."),
                                plugins=plugins)
    now = {**task_options(inherit_generator(store, request, plugins), plugins), "arch": request.arch,
           "factorizer": request.factorizer, "steps": request.steps, "epochs": request.epochs,
           "epochs_decay": request.epochs_decay}
    then = {**stored_options(entry), "arch": entry["arch"], "factorizer": entry["factorizer"],
            "steps": entry["train"]["steps"]}
    changed = [f"{k.replace('_', '-')} {then[k]!r} (the file: {now[k]!r})" for k in now
               if k in then and k not in HOW and now[k] is not None and now[k] != then[k]]
    if changed:
        raise PbganError(f"task {entry['name']!r} is stored in {model_dir} with {', '.join(changed)}; "
                         f"put the stored values back in {experiment.path.name} or give a new model_dir")


# label of a model's task -> the listener that shows its training (events.py), or None
ProgressFactory = Callable[[str], Any]


def _no_progress(label: str) -> None:
    return None


def train_model(experiment: Experiment, method: str, seed: int, model_dir: Path,
                progress: ProgressFactory = _no_progress) -> None:
    """Train the file's tasks in one model directory, skipping stored ones and resuming an
    interrupted one."""
    for i, task in enumerate(experiment.tasks):
        kwargs = train_kwargs(experiment, task, method, seed, model_dir, first=i == 0)
        if ModelStore(model_dir).has_task(task["name"]):
            check_unchanged(experiment, model_dir, kwargs)
            continue
        listener = progress(f"{method} seed {seed}: {task['name']} ({i + 1} of {len(experiment.tasks)})")
        try:
            api.train(kwargs.pop("arch", None), kwargs.pop("task"), kwargs.pop("data", None), progress=False,
                      listeners=[listener] if listener is not None else [],
                      resume=checkpoint_path(model_dir, task["name"]).exists(), **kwargs)
        except Interrupted as exc:
            raise Interrupted(f"{exc.args[0].split(';')[0]} in {model_dir}; run `pbgan run {experiment.path}` "
                              "again to continue where it stopped") from None


def run_experiment(experiment: Experiment, progress: ProgressFactory = _no_progress,
                   report: bool = True) -> dict[str, Any]:
    """Train every model of the experiment, then write its comparison (and each model's report)."""
    runs = []
    for method, seed, model_dir in experiment.runs:
        train_model(experiment, method, seed, model_dir, progress)
        model = api.Model.open(model_dir)
        model.record_missing_stages()
        runs.append({"method": method, "seed": seed, "model_dir": str(model_dir),
                     "report": str(model.report()) if report else None,
                     "final": model.store.manifest["stages"][-1]["metrics"],
                     "stored": {t.name: t.params["stored"] for t in model.tasks},
                     "standalone": model.tasks[0].params["standalone"]})
    rows = comparison(runs, [t["name"] for t in experiment.tasks])
    results = {"experiment": str(experiment.path), "baseline": BASELINE if _has_baseline(runs) else None,
               "rows": rows, "runs": runs}
    stem = experiment.results_stem
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(results, indent=2).encode())
    atomic_write_bytes(stem.with_suffix(".csv"), _csv(rows).encode())
    return results


def _has_baseline(runs: list[dict[str, Any]]) -> bool:
    return any(r["method"] == BASELINE for r in runs)


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value); None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def comparison(runs: list[dict[str, Any]], tasks: list[str]) -> list[dict[str, Any]]:
    """One row per (method, task): each metric's mean and spread over seeds and, where the warm full
    copy ran, the mean and spread of its per-seed ratio to it; the stored parameters as a ratio
    to the warm full copy's (else to one standalone generator)."""
    base = {r["seed"]: r for r in runs if r["method"] == BASELINE}
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        for task in tasks:
            row: dict[str, Any] = {"method": method, "task": task, "seeds": len(mine)}
            for m in METRICS:
                row[m], row[f"{m}_sd"] = _spread([r["final"][task][m] for r in mine])
                if base:
                    row[f"{m}_ratio"], row[f"{m}_ratio_sd"] = _spread(
                        [r["final"][task][m] / base[r["seed"]]["final"][task][m] for r in mine
                         if r["seed"] in base and base[r["seed"]]["final"][task][m]])
            against = next(iter(base.values()))["stored"][task] if base else mine[0]["standalone"]
            row["stored_ratio"] = mine[0]["stored"][task] / against
            rows.append(row)
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def comparison_table(results: Mapping[str, Any], width: int = 120):
    """The comparison as a rich table: mean ±standard deviation over seeds, one section per method.
    Under 110 columns each spread and header word takes a line of its own, so that every number
    stays whole down to 80 columns."""
    from rich.table import Table

    sep = " " if width >= 110 else "\n"
    with_base = results["baseline"] is not None
    seeds = max(r["seeds"] for r in results["rows"])
    table = Table(title=f"every task after the last one, mean ±sd over {seeds} seed(s)"
                  + (f"; ratios to {BASELINE}, the warm full copy (l1: lower is better)" if with_base else ""))
    shown = ("psnr", "ssim") if with_base else METRICS
    table.add_column("method / task", overflow="fold")
    for col in (*shown, *(f"{m} ratio" for m in METRICS if with_base),
                f"params x {'warm copy' if with_base else 'standalone'}"):
        table.add_column(col.replace(" ", sep), justify="right")

    def cell(mean, sd, digits):
        return "-" if mean is None else f"{mean:.{digits}f}{sep}±{sd:.{digits}f}"

    method = None
    for r in results["rows"]:
        if r["method"] != method:
            if method is not None:
                table.add_section()
            method = r["method"]
            table.add_row(method, style="bold")
        table.add_row(f"  {r['task']}", *[cell(r[m], r[f"{m}_sd"], 1 if m == "psnr" else 3) for m in shown],
                      *[cell(r[f"{m}_ratio"], r[f"{m}_ratio_sd"], 3) for m in METRICS if with_base],
                      f"{r['stored_ratio']:.3f}")
    return table
