"""The `pbgan` command line (Typer + rich). Errors print as one line with a non-zero exit."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from . import __version__, api
from .console import console, errors, keep_numbers_whole
from .errors import PbganError
from .options import parse_extra_args
from .plugins import get_plugins
from .protocol import DEFAULT_PROTOCOL
from .store import ModelStore, default_model_dir

ModelDir = typer.Option(None, "--model-dir", envvar="PBGAN_MODEL_DIR",
                        help="Lifelong model directory [default: ./pbgan-model]")
ProtocolOption = typer.Option(DEFAULT_PROTOCOL, "--protocol", help="Test-time protocol: eval (running statistics, "
                              "no dropout; the reference test.py --eval) or reference (each image on its own with "
                              "batch statistics and dropout on, seeded per image, as the reference test.py without "
                              "--eval and the pix2pix paper)")


def _store(model_dir: Optional[Path], must_exist: bool = True) -> ModelStore:
    store = ModelStore(model_dir or default_model_dir())
    if must_exist and not store.exists:
        raise PbganError(f"no pbgan model in {store.root}; train a task first or pass --model-dir")
    return store


def _version(value: bool) -> None:
    if value:
        console.print(f"pbgan {__version__}")
        raise typer.Exit()


def _train_epilog() -> str:
    from .optiondocs import options_text

    return ("Example: pbgan train --arch pix2pix --task facades --data ../shared/data/facades --direction BtoA "
            "--size 64 --steps 200\n\nOptions added by plugins (give them after the others; each applies "
            "with the --arch, --factorizer or --dataset that adds it):\n\n" + options_text(get_plugins()))


def build_app() -> typer.Typer:
    app = typer.Typer(name="pbgan", help="Lifelong image-to-image GANs with Piggyback GAN: one generator, many "
                      "tasks, zero forgetting.", add_completion=False, no_args_is_help=True,
                      pretty_exceptions_enable=False, rich_markup_mode=None)

    @app.callback()
    def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")) -> None:
        pass

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                 epilog=_train_epilog())
    def train(
        ctx: typer.Context,
        arch: Optional[str] = typer.Option(None, "--arch", help="Architecture, e.g. pix2pix (see list-plugins) "
                                           "[default: the model's; required for its first task]"),
        task: str = typer.Option(..., "--task", help="Name of the new task, unique in the model"),
        data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder [default: the data home's "
                                            "folder of the task's name, for known datasets]"),
        direction: Optional[str] = typer.Option(None, "--direction", help="AtoB or BtoA [default: the known "
                                                "dataset's usual direction, else AtoB]"),
        size: Optional[int] = typer.Option(None, "--size", help="Training image size in pixels [default: the "
                                           "model's first task's, else 256]"),
        steps: Optional[int] = typer.Option(None, "--steps", help="Stop after exactly this many optimizer steps "
                                            "(batches), whatever --epochs and --epochs-decay add up to; the learning "
                                            "rate still follows their per-epoch schedule [default: (epochs + "
                                            "epochs-decay) x batches per epoch]"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (passes over the training images) at "
                                             "the initial learning rate [default: the architecture's, 100 for "
                                             "pix2pix and cyclegan, as the reference n_epochs]"),
        epochs_decay: Optional[int] = typer.Option(None, "--epochs-decay", help="Epochs after those in which the "
                                                   "learning rate falls linearly, once per epoch, to 1/(N+1) of the "
                                                   "initial one in the last epoch, as the reference n_epochs_decay "
                                                   "[default: the architecture's, 100]"),
        batch_size: int = typer.Option(1, "--batch-size", help="Images per optimizer step (per process with --nproc)"),
        factorizer: str = typer.Option("piggyback", "--factorizer", help="How tasks share the generator"),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset plugin [default: the "
                                              "architecture's]"),
        derive: Optional[str] = typer.Option(None, "--derive", help="Derive conditions from a folder of photos: "
                                             "edges, grayscale, blur, noise, pixelate, dark or negative (implies --dataset derived)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
        seed: int = typer.Option(0, "--seed", help="Random seed of the weights, crops, flips and image order"),
        resume: bool = typer.Option(False, "--resume", help="Continue the task's interrupted run from its "
                                    "checkpoint (give the same options)"),
        checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Save a checkpoint every N steps "
                                             "(0: only when interrupted); the last one is kept until the task "
                                             "is stored"),
        precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 (CPU or GPU) or fp16 (GPU, with "
                                      "loss scaling)"),
        nproc: int = typer.Option(1, "--nproc", help="Train with N processes on this machine (one per GPU, "
                                  "or CPU processes); same as torchrun --nproc_per_node N -m pbgan_core train"),
        logger: Optional[list[str]] = typer.Option(None, "--logger", metavar="NAME", help="Also log with this logger plugin "
                                                   "(repeatable): tensorboard, samples, ... (see list-plugins); "
                                                   "MODEL_DIR/logs/TASK.jsonl is always written unless one is none"),
        log_every: int = typer.Option(10, "--log-every", help="Log the losses and learning rate every N steps"),
        sample_every: int = typer.Option(0, "--sample-every", show_default=False, help="Translate a few fixed training and test "
                                         "images every N steps for the samples and tensorboard loggers "
                                         "[default: ten times a run]"),
        model_dir: Optional[Path] = ModelDir,
    ) -> None:
        """Train a new task of the lifelong model: the first task seeds the filter bank, later
        tasks piggyback on it."""
        arch = api.model_arch(arch, model_dir)
        table, owner = api.train_options(arch, factorizer, dataset, derive)
        extra = parse_extra_args(ctx.args, table, owner)
        trained = api.train(arch, task, data, model_dir=model_dir, direction=direction, size=size, steps=steps,
                            epochs=epochs, epochs_decay=epochs_decay, batch_size=batch_size,
                            factorizer=factorizer, dataset=dataset, derive=derive, device=device, seed=seed,
                            resume=resume, checkpoint_every=checkpoint_every, precision=precision, nproc=nproc,
                            loggers=logger or (), log_every=log_every, sample_every=sample_every, **extra)
        if trained is None:  # not rank 0 of a distributed run: rank 0 reports
            return
        p = trained.params
        console.print(Text.assemble(("trained", "green"), f" task {trained.name!r} (#{trained.index}) in "
                      f"{model_dir or default_model_dir()}: {p['stored']:,} stored parameters, "
                      f"{p['stored'] / p['standalone']:.3f} of a standalone generator; metrics {trained.metrics}"))

    @app.command("run")
    def run_cmd(experiment: Path = typer.Argument(..., help="The experiment file (TOML)")) -> None:
        """Run a whole lifelong experiment from one file: its tasks in order, for each method and
        seed it lists, then a comparison table (also written as CSV and JSON beside the models)
        and each model's report. Running the file again continues it where it stopped.

        Example: pbgan run examples/three_tasks.toml
        """
        from .console import training_progress
        from .experiment import comparison_table, load_experiment, run_experiment

        exp = load_experiment(experiment)
        results = run_experiment(exp, progress=training_progress)
        console.print(comparison_table(results, console.width))
        stem = exp.results_stem
        console.print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.json')}; reports: "
                      + ", ".join(r["report"] for r in results["runs"]), markup=False)

    @app.command()
    def generate(
        input: Path = typer.Argument(..., help="An image, or a folder of images"),
        output: Path = typer.Argument(..., help="Output folder (or a .png path for one image)"),
        task: str = typer.Option(..., "--task", help="Which task's generator to run"),
        direction: Optional[str] = typer.Option(None, "--direction", help="AtoB or BtoA [default: the task's]"),
        aligned: bool = typer.Option(False, "--aligned", help="Inputs are A|B files: use their condition half"),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda:N)"),
        force: bool = typer.Option(False, "--force", help="Replace existing output files"),
        protocol: str = ProtocolOption,
        model_dir: Optional[Path] = ModelDir,
    ) -> None:
        """Run a stored task on images and write PNGs with the inputs' base names (full names
        where two inputs share one: x.jpg.png, x.png.png). Existing files are kept unless --force.

        Example: pbgan generate --task facades --aligned ../shared/data/facades/test out/
        """
        written = api.Model.open(model_dir).generate(task, input, output, direction, aligned, device, protocol,
                                                     force=force)
        console.print(f"wrote {len(written)} image(s) to {written[0].parent}")

    @app.command()
    def tasks(json_out: bool = typer.Option(False, "--json", help="Print JSON"),
              model_dir: Optional[Path] = ModelDir) -> None:
        """List the model's tasks: order, architecture, stored parameters and their ratio to a
        standalone generator, file sizes.

        Example: pbgan tasks --model-dir pbgan-model
        """
        from .accounting import task_rows

        store = _store(model_dir)
        rows, totals = task_rows(store)
        if json_out:
            print(json.dumps({"model_dir": str(store.root), "tasks": rows, "totals": totals}, indent=2))
            return
        console.print(tasks_table(f"tasks in {store.root}", rows))
        console.print(f"total stored: {totals['stored_parameters']:,} parameters "
                      f"({totals['ratio_to_standalone_per_task']:.3f} of one standalone generator per task, "
                      f"{totals['stored_parameters'] / max(totals['standalone_parameters'], 1):.3f} of one); "
                      f"bank: {totals['bank_filter_parameters']:,} filter parameters")

    @app.command("list-plugins")
    def list_plugins(json_out: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
        """List installed plugins and what each provides.

        Example: pbgan list-plugins --json
        """
        plugins = get_plugins()
        from .optiondocs import describe, option_groups

        options: dict[str, dict[str, list]] = {}
        for title, owner, group in option_groups(plugins):
            options.setdefault(owner, {})[title] = [describe(o) for o in group]
        rows = [{"name": i.name, "version": i.version, "distribution": i.distribution,
                 "provides": {k: sorted(v) for k, v in i.provides.items()},
                 "options": options.get(i.name, {})} for i in plugins.info.values()]
        rows.sort(key=lambda r: r["name"])
        if json_out:  # the core's own train options too, as a row of their own
            core = {"name": "pbgan_core", "version": __version__, "distribution": "pbgan", "provides": {},
                    "options": options["pbgan_core"]}
            print(json.dumps([core, *rows], indent=2))
            return
        table = Table(title="pbgan plugins")
        for col in ("plugin", "version", "distribution", "provides"):
            table.add_column(col)
        for r in rows:
            provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["provides"].items() if v) or "-"
            table.add_row(r["name"], r["version"] or "-", r["distribution"] or "-", provides)
        console.print(table)

    @app.command()
    def demo(out: Path = typer.Option(Path("pbgan-demo"), "--out", help="Where the photos, the model and its "
                                      "report go"),
             steps: int = typer.Option(500, "--steps", help="Training steps per task"),
             size: int = typer.Option(64, "--size", help="Image size"),
             device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda:N)")) -> None:
        """Learn a few image translations one after another on built-in photos (no download):
        show each task's score against its trivial baseline, check the earlier tasks are unchanged,
        and write the HTML report (OUT/model/report/index.html).

        Example: pbgan demo --out pbgan-demo
        """
        from .demo import run_demo

        run_demo(out, steps=steps, size=size, device=device)

    add_plugin_commands(app)
    return app


def _command_names(app: typer.Typer) -> set[str]:
    return ({c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
            | {g.name for g in app.registered_groups})


def add_plugin_commands(app: typer.Typer) -> None:
    """Let each plugin add its commands, noting which plugin added which (for list-plugins)."""
    plugins = get_plugins()
    for impl in reversed(plugins.manager.hook.register_commands.get_hookimpls()):
        before = _command_names(app)
        impl.function(cli=app)
        added = _command_names(app) - before
        info = plugins.info.get(impl.plugin_name)
        if info is not None and added:
            info.provides["commands"] = sorted(set(info.provides.get("commands", [])) | added)


def tasks_table(title: str, rows: list[dict]) -> Table:
    """`pbgan tasks`: one row per task, one metric a line; numbers stay whole at 80 columns."""
    table = Table(title=title)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("task")
    table.add_column("arch\nfactorizer")
    for header in ("stored\nparams", "x stand-\nalone", "file\nsize"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("metrics", no_wrap=True)
    for r in rows:
        metrics = "\n".join(f"{k} {v:.3f}" for k, v in (r["metrics"] or {}).items())
        table.add_row(str(r["index"]), r["name"], f"{r['arch']}\n{r['factorizer']}", f"{r['stored_parameters']:,}",
                      f"{r['ratio_to_standalone']:.3f}", _human(r["file_bytes"]), metrics)
    return keep_numbers_whole(table)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    errors.print(f"warning: {message}", markup=False)


INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        app = build_app()
        result = app(args=argv, prog_name="pbgan", standalone_mode=False)
        if result == INTERRUPTED:  # Typer turns a Ctrl-C inside a command into a silent exit 130
            raise KeyboardInterrupt
        return result if isinstance(result, int) else 0
    except PbganError as exc:
        errors.print(f"error: {exc}", markup=False)
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors from the parser
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            console.print(ctx.get_help())
            return 0
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        errors.print(f"error: {exc.format_message()}{hint}", markup=False)
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        errors.print("error: interrupted; the model directory keeps only changes that were complete", markup=False)
        return INTERRUPTED
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("PBGAN_DEBUG"):
            raise
        errors.print(f"error: internal error {type(exc).__name__}: {exc} (set PBGAN_DEBUG=1 for the traceback)",
                     markup=False)
        return 1


def run() -> None:
    sys.exit(main())
