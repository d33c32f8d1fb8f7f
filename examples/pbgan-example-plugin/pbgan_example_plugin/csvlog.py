"""A logger plugin, as an experiment tracker's would be: the losses of every step as CSV rows in
MODEL_DIR/logs/TASK.csv (a W&B or MLflow logger would send the same events to its server)."""
from __future__ import annotations

import csv
from pathlib import Path

from pbgan_core.events import End, Start, Step
from pbgan_core.interfaces import Logger


class CsvLog:
    def __init__(self, path: Path):
        self.path = path

    def on_start(self, event: Start) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a" if event.start else "w", newline="")
        self.rows = csv.writer(self.file)
        self.columns: list[str] | None = None

    def on_step(self, event: Step) -> None:
        if self.columns is None:  # the losses a trainer reports are the same every step
            self.columns = list(event.losses)
            if event.step == 1:  # a resumed run appends to the rows it had
                self.rows.writerow(["step", "lr", *self.columns])
        self.rows.writerow([event.step, event.lr, *(event.losses[c] for c in self.columns)])

    def on_end(self, event: End) -> None:
        self.file.close()


LOGGER = Logger("csv", lambda request: CsvLog(Path(request.model_dir) / "logs" / f"{request.task}.csv"),
                "MODEL_DIR/logs/TASK.csv: step, learning rate and losses of every step (example plugin)")
