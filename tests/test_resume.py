"""Checkpoints: a training process killed mid-run resumes to exactly the uninterrupted result."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pbgan_core import atomic
from pbgan_core.checkpoint import flatten_state, load_checkpoint, unflatten_state
from pbgan_core.store import ModelStore
from pbgan_plugins.loggers import read_log
from tests.conftest import FACADES, TINY, needs_data, one_line_error

pytestmark = needs_data(FACADES)

TRAIN = ["train", "--arch", "pix2pix", "--data", FACADES, "--direction", "BtoA", *TINY, "--max-images", "6"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pbgan(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pbgan_core", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out + err


def test_flatten_round_trip_keeps_types():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1, betas=(0.5, 0.9))
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {"opt": opt.state_dict(), "rng": torch.get_rng_state(), "none": None, "pair": (1, [2.5, "x"])}
    structure, tensors = flatten_state(state)
    back = unflatten_state(structure, tensors)
    assert back["pair"] == (1, [2.5, "x"]) and back["none"] is None
    assert back["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert list(back["opt"]["state"]) == [0]  # integer keys survive
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(back["rng"], state["rng"])


def test_killed_run_resumes_to_the_uninterrupted_result(cli, tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    cli(*TRAIN, "--task", "first", "--steps", 4, "--model-dir", interrupted)
    shutil.copytree(interrupted, reference)
    before = snapshot(interrupted)

    second = [*TRAIN, "--task", "second", "--steps", 40, "--checkpoint-every", 3]
    proc = pbgan(*second, "--model-dir", interrupted)
    ckpt = interrupted / "checkpoints" / "second" / "checkpoint.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(interrupted, "second")["step"]
    assert 0 < killed_at < 40
    assert {k: v for k, v in snapshot(interrupted).items()
            if not k.startswith(("checkpoints", ".lock", "logs/second"))} == before

    code, _, err = cli(*second, "--model-dir", interrupted, expect=1)  # a checkpoint exists: no silent restart
    assert "--resume" in err
    finish(pbgan(*second, "--resume", "--model-dir", interrupted))
    finish(pbgan(*second, "--model-dir", reference))

    after = snapshot(interrupted)
    rewritten = ("manifest.json", "README.md")
    assert all(after[k] == v for k, v in before.items() if k not in rewritten)  # earlier files untouched
    assert not (interrupted / "checkpoints").exists()
    assert ModelStore(interrupted).task("second")["train"]["resumed_at_step"] == killed_at
    # the log goes on from the checkpoint: every step once, in order, whatever was logged after it dropped
    log = read_log(interrupted / "logs" / "second.jsonl")
    assert [r["start"] for r in log if r["event"] == "start"] == [0, killed_at]
    steps = [r["step"] for r in log if r["event"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 40 and log[-1] == {**log[-1], "event": "end", "error": None}
    for rel in ("tasks/0002-second.safetensors", "bank/0002-second.safetensors"):
        resumed, straight = load_file(interrupted / rel), load_file(reference / rel)
        assert resumed.keys() == straight.keys()
        for key in resumed:
            assert torch.equal(resumed[key], straight[key]), f"{rel}: {key} differs"


def test_resume_without_checkpoint_says_so(cli, tmp_path):
    code, _, err = cli(*TRAIN, "--task", "t", "--steps", 2, "--resume", "--model-dir", tmp_path, expect=1)
    assert "no checkpoint" in err and len([l for l in err.splitlines() if l.startswith("error:")]) == 1


def test_ctrl_c_saves_a_checkpoint_at_a_step_boundary(tmp_path):
    proc = pbgan(*TRAIN, "--task", "t", "--steps", 200, "--checkpoint-every", 2, "--model-dir", tmp_path)
    ckpt = tmp_path / "checkpoints" / "t" / "checkpoint.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = one_line_error(err)
    step = load_checkpoint(tmp_path, "t")["step"]
    assert f"interrupted at step {step} of 200" in line and "--resume" in line
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / ".lock").exists()


def interrupt(cli, model: Path, task: str) -> None:
    """A run of `task` stopped by Ctrl-C (pressed while its first checkpoint is written): its checkpoint stays."""
    def press(stage, path):
        if stage == "write" and path.name == "checkpoint.safetensors" and not load_checkpoint(model, task):
            signal.raise_signal(signal.SIGINT)

    atomic.fault_hook = press
    try:
        cli(*TRAIN, "--task", task, "--steps", 4, "--checkpoint-every", 1, "--model-dir", model, expect=130)
    finally:
        atomic.fault_hook = None
    assert load_checkpoint(model, task)["step"] < 4


def test_another_task_warns_of_an_interrupted_run_it_voids_and_resume_names_it(cli, tmp_path):
    model = tmp_path / "m"
    interrupt(cli, model, "paused")
    _, _, err = cli(*TRAIN, "--task", "other", "--steps", 1, "--model-dir", model)
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "'paused'" in warning and "pbgan train --arch pix2pix --task paused" in warning
    command = warning[warning.index("pbgan train"):].split()[1:]
    assert "--resume" in command and command[command.index("--steps") + 1] == "4"
    _, _, err = cli(*TRAIN, "--task", "paused", "--steps", 4, "--checkpoint-every", 1, "--resume",
                    "--model-dir", model, expect=1)
    assert "task 'other' was stored after it was made" in one_line_error(err)
    _, _, err = cli(*TRAIN, "--task", "later", "--steps", 1, "--model-dir", model)
    assert "warning:" not in err  # voided already: nothing more to lose
