"""Run a pbgan command in a forked process: to end it with a real `os._exit` (as `kill -9` would,
no cleanup runs) at a write point, or to hold it at the model-dir lock while another command runs.

Forking (not a fresh interpreter) keeps each run fast: the child inherits the imported modules.
The child uses one torch thread: OpenMP thread pools do not survive a fork.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

KILLED = 137


class Forked:
    """`pause` is "before-lock" (the command has read what it reads early and is about to take the
    lock) or "holding-lock" (it has just taken it); `hook` is installed as the atomic writer's
    fault hook in the child."""

    def __init__(self, argv: list, pause: str | None = None, hook: Callable | None = None):
        self.ready_r, ready_w = os.pipe()
        go_r, self.go_w = os.pipe()
        fd, self.log = tempfile.mkstemp(prefix="pbgan-forked-", suffix=".log")
        self.pid = os.fork()
        if self.pid == 0:  # the child never returns into pytest
            code = 99
            try:
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(self.ready_r)
                os.close(self.go_w)
                torch.set_num_threads(1)
                code = _child(argv, pause, hook, ready_w, go_r)
            finally:
                os._exit(code)
        os.close(fd)
        os.close(ready_w)
        os.close(go_r)

    def paused(self) -> bool:
        """Wait until the child reaches its pause point (False if it ended before)."""
        return os.read(self.ready_r, 1) == b"x"

    def release(self) -> None:
        os.write(self.go_w, b"x")

    def finish(self) -> tuple[int, str]:
        """(exit code, everything it printed)."""
        with contextlib.suppress(OSError):
            self.release()
        _, status = os.waitpid(self.pid, 0)
        for fd in (self.ready_r, self.go_w):
            os.close(fd)
        text = Path(self.log).read_text()
        os.unlink(self.log)
        return os.waitstatus_to_exitcode(status), text


def _child(argv: list, pause: str | None, hook: Callable | None, ready_w: int, go_r: int) -> int:
    import sys

    from pbgan_core import atomic, store
    from pbgan_core.cli import main

    sys.stdout = open(1, "w", buffering=1, closefd=False)  # pytest's capture objects are not ours
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    atomic.fault_hook = hook
    if pause is not None:
        original = store.model_lock

        def wait() -> None:
            os.write(ready_w, b"x")
            os.read(go_r, 1)

        @contextlib.contextmanager
        def paused_lock(root):
            if pause == "before-lock":
                wait()
            with original(root):
                if pause == "holding-lock":
                    wait()
                yield

        store.model_lock = paused_lock
    return main([str(a) for a in argv])
