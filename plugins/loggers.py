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

import json
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


class JsonlLog:
    """MODEL_DIR/logs/TASK.jsonl: a new run starts it afresh, a resumed one appends after the
    lines of the steps its checkpoint kept."""

    def __init__(self, path: Path, every: int, resume: bool):
        self.path, self.every, self.resume = path, every, resume

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def on_start(self, event: Start) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = b""
        if self.resume and self.path.exists():
            lines = self.path.read_bytes().splitlines(keepends=True)
            later = next((i for i, line in enumerate(lines) if _step_of(line) > event.start), len(lines))
            kept = b"".join(lines[:later])
            if kept and not kept.endswith(b"\n"):  # a torn last line stays on a line of its own
                kept += b"\n"
        atomic_write_bytes(self.path, kept)
        self.file = open(self.path, "a", encoding="utf-8")
        self.write({"event": "start", "task": event.task, "total": event.total, "start": event.start,
                    "options": dict(event.options)})

    def on_step(self, event: Step) -> None:
        if _logged(event.step, event.total, self.every):
            self.write({"event": "step", "step": event.step, "total": event.total, "epoch": event.epoch,
                        "lr": event.lr, "lrs": dict(event.lrs), "losses": dict(event.losses),
                        "time": round(event.seconds, 3)})

    def on_samples(self, event: Samples) -> None:
        self.write({"event": "samples", "step": event.step, "splits": sorted(event.images)})

    def on_stored(self, event: Stored) -> None:
        self.write({"event": "stored", "task": event.task, "index": event.entry["index"],
                    "params": event.entry["params"]})

    def on_eval(self, event: Evaluated) -> None:
        self.write({"event": "eval", "task": event.task, "metrics": event.metrics})

    def on_end(self, event: End) -> None:
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
        self.folder, self.every, self.writer_class = folder, every, writer_class

    def on_start(self, event: Start) -> None:
        self.total = event.total  # a resumed run replaces what was logged after its checkpoint
        self.writer = self.writer_class(log_dir=str(self.folder), purge_step=event.start + 1 if event.start else None)

    def on_step(self, event: Step) -> None:
        if _logged(event.step, event.total, self.every):
            for name, value in event.losses.items():
                self.writer.add_scalar(f"loss/{name}", value, event.step)
            for name, value in event.lrs.items():
                self.writer.add_scalar(f"lr/{name}", value, event.step)

    def on_samples(self, event: Samples) -> None:
        for split, images in event.images.items():
            self.writer.add_image(f"samples/{split}", (strips(*images) + 1) / 2, event.step)

    def on_eval(self, event: Evaluated) -> None:
        for task, row in event.metrics.items():
            for metric, value in row.items():
                self.writer.add_scalar(f"metrics/{task}/{metric}", value, self.total)

    def on_end(self, event: End) -> None:
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
    """MODEL_DIR/logs/samples/TASK/STEP-SPLIT.png: condition | output | target, one image a row."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_samples(self, event: Samples) -> None:
        for split, images in event.images.items():
            write_image(strips(*images), self.folder / f"{event.step:07d}-{split}.png")


@hookimpl
def register_loggers(register):
    register(Logger("jsonl", lambda r: JsonlLog(log_path(r.model_dir, r.task), r.log_every, r.resume),
                    "MODEL_DIR/logs/TASK.jsonl: step, epoch, learning rate, losses every --log-every steps"))
    register(Logger("tensorboard", tensorboard_log,
                    "MODEL_DIR/logs/tensorboard/TASK/: losses, learning rates, metrics and samples "
                    "(pip install 'pbgan[tensorboard]')"))
    register(Logger("samples", lambda r: SampleImages(Path(r.model_dir) / LOGS / "samples" / r.task),
                    "MODEL_DIR/logs/samples/TASK/: condition | output | target strips every --sample-every steps"))
