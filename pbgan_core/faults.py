"""Faults injected at the atomic writer's write points (`atomic.fault_hook`), as the crash tests
and `benchmarks/hostile_sweep.py` use them: a full disk, a Ctrl-C, or the process killed."""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

KILLED = 137  # the exit status a killed process reports, as a shell shows SIGKILL
KINDS = ("disk-full", "ctrl-c", "kill")


class Fault:
    """The hook: at write point number `at` the disk is full, Ctrl-C is pressed or the process dies."""

    def __init__(self, kind: str, at: int):
        self.kind, self.at, self.seen = kind, at, 0

    def __call__(self, stage: str, path: Path) -> None:
        self.seen += 1
        if self.seen - 1 != self.at:
            return
        if self.kind == "disk-full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        if self.kind == "ctrl-c":
            signal.raise_signal(signal.SIGINT)  # handled as a real Ctrl-C would be, right here
        if self.kind == "kill":
            os._exit(KILLED)
