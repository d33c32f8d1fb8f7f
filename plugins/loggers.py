"""Built-in loggers, all writing under MODEL_DIR/logs/:

    logs/TASK.jsonl               jsonl: one JSON object a line (on unless --logger none)
    logs/tensorboard/TASK/        tensorboard: losses, learning rates, metrics, samples
    logs/samples/TASK/            samples: condition | output | target strips as PNG

JSONL lines all have "event" (start, step, samples, stored, eval, end); "step" lines have
"step" (1-based optimizer step), "total", "epoch", "lr", "lrs", "losses" and "time" (seconds
of training so far). Each line is flushed as it is written, so a killed run leaves every
earlier line whole; `read_log` skips a torn last line.
"""
from __future__ import annotations

import functools
import html
import itertools
import json
import warnings
from pathlib import Path
from typing import Any

from pbgan_core.atomic import atomic_write_bytes
from pbgan_core.errors import PbganError
from pbgan_core.events import End, Evaluated, Samples, Start, Step, Stored
from pbgan_core.hookspecs import hookimpl
from pbgan_core.images import write_image
from pbgan_core.interfaces import Logger
from pbgan_core.samples import strips
from pbgan_core.store import LOGS


def log_path(model_dir: Path, task: str) -> Path:
    return Path(model_dir) / LOGS / f"{task}.jsonl"


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL training log, skipping a line torn by a killed run."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PbganError(f"no training log {path}; it is written while a task trains (unless --logger none)") from None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _logged(step: int, total: int, every: int) -> bool:
    return step == 1 or step == total or (every > 0 and step % every == 0)


class LogWarning(UserWarning):
    """A log could not be written; training goes on without it."""


def best_effort(method):
    """A logger that cannot write (a full disk, a read-only folder) warns once and stops logging:
    losing a log must not cost the training."""
    @functools.wraps(method)
    def guarded(self, event):
        if self.failed:
            return
        try:
            method(self, event)
        except OSError as exc:
            self.failed = True
            warnings.warn(f"{self.where} could not be written ({exc.strerror or exc}); training goes on without "
                          "this log", LogWarning, stacklevel=2)
    return guarded


class JsonlLog:
    """MODEL_DIR/logs/TASK.jsonl: a new run starts it afresh, a resumed one appends after the
    lines of the steps its checkpoint kept."""

    passive = ("samples",)  # notes samples other loggers asked for

    def __init__(self, path: Path, every: int, resume: bool):
        self.where, self.every, self.resume = path, every, resume
        self.file, self.failed = None, False

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    @best_effort
    def on_start(self, event: Start) -> None:
        self.where.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.where, "a" if self.resume else "w", encoding="utf-8")
        if self.resume:  # cut what was logged after the checkpoint, in place: earlier lines stay as they are
            lines = self.where.read_bytes().splitlines(keepends=True)
            kept = list(itertools.takewhile(lambda line: _step_of(line) <= event.start, lines))
            self.file.truncate(sum(map(len, kept)))
            if kept and not kept[-1].endswith(b"\n"):  # a torn last line stays on a line of its own
                self.file.write("\n")
        self.write({"event": "start", "task": event.task, "total": event.total, "start": event.start,
                    "options": dict(event.options)})

    @best_effort
    def on_step(self, event: Step) -> None:
        if _logged(event.step, event.total, self.every):
            self.write({"event": "step", "step": event.step, "total": event.total, "epoch": event.epoch,
                        "lr": event.lr, "lrs": dict(event.lrs), "losses": dict(event.losses),
                        "time": round(event.seconds, 3)})

    @best_effort
    def on_samples(self, event: Samples) -> None:
        self.write({"event": "samples", "step": event.step, "splits": sorted(event.images)})

    @best_effort
    def on_stored(self, event: Stored) -> None:
        self.write({"event": "stored", "task": event.task, "index": event.entry["index"],
                    "params": event.entry["params"]})

    @best_effort
    def on_eval(self, event: Evaluated) -> None:
        self.write({"event": "eval", "task": event.task, "metrics": event.metrics})

    @best_effort
    def on_end(self, event: End) -> None:
        if self.file is not None:
            self.write({"event": "end", "time": round(event.seconds, 3), "error": event.error})
            self.file.close()


def _step_of(line: bytes) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except (ValueError, AttributeError, TypeError):
        return -1


class TensorBoardLog:
    """Scalars (losses, learning rates, metrics) and sample images for TensorBoard."""

    def __init__(self, folder: Path, every: int, writer_class: type):
        self.where, self.every, self.writer_class = folder, every, writer_class
        self.writer, self.failed = None, False

    @best_effort
    def on_start(self, event: Start) -> None:
        self.total = event.total  # a resumed run replaces what was logged after its checkpoint
        self.writer = self.writer_class(log_dir=str(self.where), purge_step=event.start + 1 if event.start else None)

    @best_effort
    def on_step(self, event: Step) -> None:
        if _logged(event.step, event.total, self.every):
            for name, value in event.losses.items():
                self.writer.add_scalar(f"loss/{name}", value, event.step)
            for name, value in event.lrs.items():
                self.writer.add_scalar(f"lr/{name}", value, event.step)

    @best_effort
    def on_samples(self, event: Samples) -> None:
        for split, images in event.images.items():
            self.writer.add_image(f"samples/{split}", (strips(*images) + 1) / 2, event.step)

    @best_effort
    def on_eval(self, event: Evaluated) -> None:
        for task, row in event.metrics.items():
            for metric, value in row.items():
                self.writer.add_scalar(f"metrics/{task}/{metric}", value, self.total)

    @best_effort
    def on_end(self, event: End) -> None:
        if self.writer is not None:
            self.writer.close()


def tensorboard_log(request: Any) -> TensorBoardLog:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PbganError("--logger tensorboard needs the tensorboard package: pip install 'pbgan[tensorboard]' "
                         "(or pip install tensorboard)") from None
    return TensorBoardLog(Path(request.model_dir) / LOGS / "tensorboard" / request.task, request.log_every,
                          SummaryWriter)


class SampleImages:
    """MODEL_DIR/logs/samples/TASK/STEP-SPLIT.png: condition | output | target, one image a row, and
    an index.html showing them newest first (the reference code's web/ folder)."""

    def __init__(self, folder: Path):
        self.where, self.failed, self.shown = folder, False, []

    @best_effort
    def on_samples(self, event: Samples) -> None:
        names = [write_image(strips(*images), self.where / f"{event.step:07d}-{split}.png").name
                 for split, images in event.images.items()]
        self.shown.insert(0, f"<h3>step {event.step}</h3>" + "".join(
            f'<figure><img src="{name}"><figcaption>{name[8:-4]}: condition | output | target</figcaption></figure>'
            for name in names))
        page = f"<!doctype html><title>{html.escape(event.task)} samples</title>{''.join(self.shown)}\n"
        atomic_write_bytes(self.where / "index.html", page.encode())


@hookimpl
def register_loggers(register):
    register(Logger("jsonl", lambda r: JsonlLog(log_path(r.model_dir, r.task), r.log_every, r.resume),
                    "MODEL_DIR/logs/TASK.jsonl: step, epoch, learning rate, losses every --log-every steps"))
    register(Logger("tensorboard", tensorboard_log,
                    "MODEL_DIR/logs/tensorboard/TASK/: losses, learning rates, metrics and samples "
                    "(pip install 'pbgan[tensorboard]')"))
    register(Logger("samples", lambda r: SampleImages(Path(r.model_dir) / LOGS / "samples" / r.task),
                    "MODEL_DIR/logs/samples/TASK/: condition | output | target strips every --sample-every steps"))
