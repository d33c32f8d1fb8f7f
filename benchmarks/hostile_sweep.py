"""A hostile sweep: bad inputs, damaged model directories and faults at every write point.

    python benchmarks/hostile_sweep.py [--workers 2] [--only inputs,data,commands,damage,faults]

Builds one small two-task model (32 px, ngf 8, 2 steps a task), then runs every case as its own
process: forked from this one (the imports are already done, so a case costs its work, not the
start of Python) with stdout and stderr captured, one torch thread and a time limit. A case passes
when it prints no traceback and no "internal error", exits 0 or with exactly one `error:` line on
stderr, and loses nothing: every task, bank and probe file that was intact before is byte-identical
after. Faults go in through the atomic writer's hook (see tests/test_crash_consistency.py); after
each, `pbgan verify` must pass and the same command (with --resume where a checkpoint is kept) must
complete. Prints a table per category and the failing cases with their command and first lines.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from pbgan_core import atomic
from pbgan_core.faults import KILLED, Fault
from pbgan_core.faults import KINDS as FAULT_KINDS
from pbgan_core.cli import build_app, main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FACADES, SHOES = DATA / "facades", DATA / "edges2shoes"
TINY = ["--size", "32", "--ngf", "8", "--ndf", "8", "--max-images", "8", "--eval-images", "2", "--steps", "2",
        "--device", "cpu"]
TIMEOUT_S = 180
MEMORY_LIMIT = 8 << 30
BAD_NUMBERS = ["-1", "0", "nan", "inf", "1e30", str(10**30), "many"]
MODEL_FILES = ("file", "bank_file", "probe_file")


@dataclass
class Case:
    category: str
    name: str
    argv: list
    model: bool = True          # runs on a fresh copy of the two-task model ("{M}" in argv)
    setup: Callable[[Path], None] | None = None  # prepares the case folder (and the copied model)
    hook: Callable | None = None  # the atomic writer's fault hook in the child
    after: Callable[["Case", Path, "Result"], list[str]] | None = None  # extra checks: problems found
    must_fail: bool = False
    result: "Result | None" = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Result:
    code: int
    out: str
    err: str


# --- running one command in a forked child -------------------------------------------------

def spawn(argv: list, folder: Path, hook=None, tag: str = "run") -> tuple[int, Path, Path]:
    out, err = folder / f"{tag}.out", folder / f"{tag}.err"
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.chdir(folder)
            for fd, path in ((1, out), (2, err)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(handle, fd)
                os.close(handle)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
            torch.set_num_threads(1)
            atomic.fault_hook = hook
            code = main([str(a) for a in argv])
        except BaseException:  # only a crash of main itself lands here: that is a finding
            import traceback
            traceback.print_exc()
            code = 98
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid, out, err


def wait(pid: int, out: Path, err: Path, started: float) -> Result:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - started > TIMEOUT_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            code = -999
            break
        time.sleep(0.05)
    return Result(code, out.read_text(errors="replace"), err.read_text(errors="replace"))


def run_now(argv: list, folder: Path, hook=None, tag: str = "run") -> Result:
    pid, out, err = spawn(argv, folder, hook, tag)
    return wait(pid, out, err, time.monotonic())


# --- judging -------------------------------------------------------------------------------

def output_problems(result: Result, must_fail: bool = False) -> list[str]:
    text = result.out + result.err
    if result.code == -999:
        return [f"timed out after {TIMEOUT_S} s"]
    problems = []
    if "Traceback" in text:
        problems.append("traceback")
    if "internal error" in text:
        problems.append("internal error")
    if result.code < 0 or result.code == 98:
        problems.append(f"crashed (exit {result.code})")
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    if result.code != 0 and len(errors) != 1:
        problems.append(f"exit {result.code} with {len(errors)} error lines")
    if result.code == 0 and must_fail:
        problems.append("accepted")
    return problems


def model_files(model: Path) -> dict[str, bytes]:
    """The task, bank and probe files the manifest names (empty without a readable manifest)."""
    try:
        tasks = json.loads((model / "manifest.json").read_text())["tasks"]
        return {entry[key]: (model / entry[key]).read_bytes() for entry in tasks for key in MODEL_FILES}
    except Exception:
        return {}


def lost(before: dict[str, bytes], model: Path) -> list[str]:
    """Files intact before the command that are missing or changed after it."""
    changed = []
    for rel, data in before.items():
        path = model / rel
        if path.is_symlink() or not path.is_file() or path.read_bytes() != data:
            changed.append(rel)
    return changed


# --- the small model and the data ----------------------------------------------------------

def train_argv(task: str, data: Path, model: str = "{M}", *extra) -> list:
    return ["train", "--arch", "pix2pix", "--task", task, "--data", data, "--direction", "BtoA", *TINY,
            "--model-dir", model, *extra]


def build_model(work: Path) -> Path:
    model = work / "model"
    for task, data in (("a", FACADES), ("b", SHOES)):
        result = run_now(train_argv(task, data, str(model)), work, tag=f"build-{task}")
        assert result.code == 0, result.out + result.err
    return model


def pair_image(size=(64, 32), mode="RGB") -> Image.Image:
    return Image.open(next((FACADES / "train").glob("*.jpg"))).convert(mode).resize(size)


def data_folder(root: Path, files: dict[str, Callable[[Path], None]]) -> Path:
    """A dataset with the train and test files `files` names, each written by its function."""
    for rel, write in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    return root


def good(path):
    pair_image().save(path.with_suffix(".jpg"))


def image_writer(mode: str, size=(64, 32), suffix=".png", bits16=False):
    def write(path):
        if bits16:
            Image.fromarray((np.random.rand(size[1], size[0]) * 65535).astype(np.uint16)).save(path.with_suffix(suffix))
        else:
            pair_image(size, mode).save(path.with_suffix(suffix))
    return write


def corrupt_jpeg(path):
    pair_image().save(path.with_suffix(".jpg"))
    data = path.with_suffix(".jpg").read_bytes()
    path.with_suffix(".jpg").write_bytes(data[: len(data) // 3])


def zero_bytes(path):
    path.with_suffix(".jpg").write_bytes(b"")


def text_file(path):
    path.with_suffix(".txt").write_text("not an image")


def bad_datasets() -> dict[str, dict]:
    def split(write, n=2):
        return {**{f"train/{i}": write for i in range(n)}, **{f"test/{i}": write for i in range(n)}}
    return {
        "no-images": split(text_file),
        "no-test-split": {f"train/{i}": good for i in range(3)},
        "flat-folder": {f"{i}": good for i in range(3)},
        "not-a|b": split(image_writer("RGB", (32, 32))),
        "corrupt-jpeg": split(corrupt_jpeg),
        "zero-byte": split(zero_bytes),
        "one-corrupt-of-many": {**split(good, 3), "train/x": corrupt_jpeg},
        "rgba": split(image_writer("RGBA")),
        "16-bit": split(image_writer("I;16", bits16=True)),
        "grayscale": split(image_writer("L")),
        "palette": split(image_writer("P")),
        "1x1": split(image_writer("RGB", (1, 1))),
        "2x1": split(image_writer("RGB", (2, 1))),
        "tall": split(image_writer("RGB", (4, 400))),
    }


# --- the cases -----------------------------------------------------------------------------

def train_options() -> list[dict]:
    """Every option of `pbgan train`: the core's from its signature, the plugins' from list-plugins."""
    import contextlib
    import inspect
    import io
    import typing
    found = []
    command = next(c for c in build_app().registered_commands if c.callback.__name__ == "train")
    for name, hint in typing.get_type_hints(command.callback).items():
        info = inspect.signature(command.callback).parameters.get(name)
        decls = getattr(getattr(info, "default", None), "param_decls", None)
        if decls:
            kinds = {int: "int", float: "float"}
            kind = next((kinds[t] for t in (hint, *typing.get_args(hint)) if t in kinds), "other")
            choices = ["bogus"] if name in ("factorizer", "dataset", "derive", "device", "precision") else None
            found.append({"flag": decls[0], "type": kind, "choices": choices, "context": []})
    with contextlib.redirect_stdout(io.StringIO()) as text:
        main(["list-plugins", "--json"])
    for plugin in json.loads(text.getvalue()):
        for group, options in plugin["options"].items():
            context = group.split() if group.startswith("--") else []
            for option in options:
                if all((o["flag"], o["context"]) != (option["flag"], context) for o in found):
                    found.append({**option, "context": context})
    return found


def option_argv(flag: str, value: str, context: list) -> list:
    argv = train_argv("c", FACADES)
    if context[:1] == ["--arch"] and context[1] != "pix2pix":  # another architecture: a fresh model
        argv = [*argv[:2], context[1], *argv[3:]]
        argv[argv.index("{M}")] = "fresh-model"
        argv = [a for a in argv if a not in ("--ndf", "8")]
    elif context and context[0] != "--arch":
        argv += context
    return [*argv, flag, value]


def input_cases() -> list[Case]:
    cases = []
    for option in train_options():
        flag, context = option["flag"], option["context"]
        if option["type"] in ("int", "float"):
            for value in BAD_NUMBERS:
                cases.append(Case("train options", f"{flag} {value}", option_argv(flag, value, context)))
        if option["choices"]:
            cases.append(Case("train options", f"{flag} bogus", option_argv(flag, "bogus", context), must_fail=True))
    for extra in (["--bogus"], ["--bogus", "1"], ["--lr"], ["-x"], ["--steps", ""], ["--steps", "2", "--steps", "x"],
                  ["--direction", "CtoD"], ["--task", ""], ["--task", "../up"], ["--task", "a/b"], ["--task", "a"],
                  ["--arch", "bogus"], ["--factorizer", "bogus"], ["--dataset", "bogus"], ["--logger", "bogus"],
                  ["--metrics", "bogus"], ["--precision", "fp8"], ["--nproc", "0"], ["--nproc", "x"]):
        argv = train_argv("c", FACADES, "{M}", *extra)
        cases.append(Case("train options", " ".join(extra) or "empty", argv, must_fail=True))
    return cases


def data_cases() -> list[Case]:
    cases = []
    for label, data in (("missing", "nowhere"), ("empty folder", "empty"), ("a file", "file.jpg")):
        def setup(folder, data=data):
            (folder / "empty").mkdir()
            (folder / "file.jpg").write_bytes(b"x")
        cases.append(Case("bad data", f"--data {label}", train_argv("c", data), setup=setup, must_fail=True))
    for label, files in bad_datasets().items():
        for first in (False, True):
            model = "fresh-model" if first else "{M}"
            cases.append(Case("bad data", f"{label} ({'first' if first else 'third'} task)",
                              train_argv("c", "data", model), setup=lambda f, files=files: data_folder(f / "data", files),
                              model=not first))
    for label, model in (("a file", "file"), ("a missing parent", "no/such/parent"), ("empty folder", "empty")):
        def setup(folder):
            (folder / "file").write_text("x")
            (folder / "empty").mkdir()
        for command in (["tasks"], ["verify"], ["eval"], ["gc"], ["recover"], ["report"],
                        ["generate", "--task", "a", "in", "out"], ["export", "--task", "a", "out"]):
            cases.append(Case("bad data", f"{' '.join(command[:1])} --model-dir {label}",
                              [*command, "--model-dir", model], setup=setup, model=False))
        cases.append(Case("bad data", f"train --model-dir {label}", train_argv("c", FACADES, model), setup=setup,
                          model=False))
    return cases


def make_inputs(folder: Path) -> None:
    (folder / "in").mkdir(exist_ok=True)
    for i, src in enumerate(sorted((FACADES / "test").glob("*.jpg"))[:2]):
        shutil.copy(src, folder / "in" / f"{i}.jpg")


def evil_pickle(folder: Path) -> None:
    """A pickle that touches MARKER when unpickled, as a .pth (torch zip) and as a raw pickle."""
    make_inputs(folder)

    class Evil:
        def __reduce__(self):
            return (Path.touch, (folder / "MARKER",))
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, folder / "evil.pth")
    (folder / "evil.pkl").write_bytes(pickle.dumps({"w": Evil()}))
    (folder / "text.pth").write_text("hello")
    (folder / "empty.pth").write_bytes(b"")
    (folder / "exists").mkdir()
    for name in ("0.png", "1.png", "latest_net_G.pth", "latest_net_G.safetensors"):
        (folder / "exists" / name).write_bytes(b"keep")
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    (folder / "random.pth").write_bytes(os.urandom(4096))
    torch.save({"not": "weights"}, folder / "plain.pth")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(folder / "wrong.safetensors"))


def no_marker(case: Case, folder: Path, result: Result) -> list[str]:
    return ["MARKER created: the pickle was unpickled"] if (folder / "MARKER").exists() else []


def toml_files(folder: Path) -> None:
    files = {
        "syntax.toml": "model_dir = 'm'\n[defaults\nsize = 32\n",
        "unknown-key.toml": "model_dir = 'm'\nbogus = 1\n[[task]]\nname = 'x'\n",
        "unknown-option.toml": "model_dir = 'm'\n[defaults]\nbogus-option = 3\n[[task]]\nname = 'x'\n",
        "wrong-type.toml": "model_dir = 'm'\n[defaults]\nsize = 'big'\n[[task]]\nname = 'x'\n",
        "wrong-type-task.toml": "model_dir = 'm'\ntask = 'x'\n",
        "nan.toml": f"model_dir = 'm'\n[defaults]\nlr = nan\n[[task]]\nname = 'x'\ndata = '{FACADES}'\n",
        "no-name.toml": f"model_dir = 'm'\n[[task]]\ndata = '{FACADES}'\n",
        "no-tasks.toml": "model_dir = 'm'\n",
        "empty.toml": "",
        "dup-task.toml": f"model_dir = 'm'\n[[task]]\nname = 'x'\ndata = '{FACADES}'\n[[task]]\nname = 'x'\n"
                         f"data = '{FACADES}'\n",
        "methods.toml": f"model_dir = 'm'\nmethods = ['bogus']\n[[task]]\nname = 'x'\ndata = '{FACADES}'\n",
        "seeds.toml": f"model_dir = 'm'\nseeds = ['x']\n[[task]]\nname = 'x'\ndata = '{FACADES}'\n",
        "missing-data.toml": "model_dir = 'm'\n[defaults]\nsize = 32\n[[task]]\nname = 'x'\ndata = 'nowhere'\n",
        "binary.toml": None,
    }
    for name, text in files.items():
        if text is None:
            (folder / name).write_bytes(os.urandom(200))
        else:
            (folder / name).write_text(text)
    (folder / "folder.toml").mkdir()


def command_cases() -> list[Case]:
    cases = []
    m = ["--model-dir", "{M}"]
    commands = {
        "generate no args": ["generate", *m],
        "generate unknown task": ["generate", "--task", "zz", "in", "out", *m],
        "generate missing input": ["generate", "--task", "a", "nowhere", "out", *m],
        "generate output in model": ["generate", "--task", "a", "in", "{M}/out", *m],
        "generate output is model": ["generate", "--task", "a", "in", "{M}", *m],
        "generate output exists": ["generate", "--task", "a", "in", "exists", *m],
        "generate bad direction": ["generate", "--task", "a", "--direction", "x", "in", "out", *m],
        "generate bad protocol": ["generate", "--task", "a", "--protocol", "x", "in", "out", *m],
        "generate bad device": ["generate", "--task", "a", "--device", "tpu", "in", "out", *m],
        "generate aligned 1x1": ["generate", "--task", "a", "--aligned", "tiny.png", "out", *m],
        "export unknown task": ["export", "--task", "zz", "out", *m],
        "export into model": ["export", "--task", "a", "{M}/exp", *m],
        "export existing": ["export", "--task", "a", "exists", *m],
        "export bad format": ["export", "--task", "a", "--format", "bogus", "out", *m],
        "export onnx missing": ["export", "--task", "a", "--format", "onnx", "out.onnx", *m],
        "report into model": ["report", "--out", "{M}/tasks", *m],
        "report out is a file": ["report", "--out", "in/0.jpg", *m],
        "report bad metric": ["report", "--metric", "bogus", "--out", "r", *m],
        "report bad samples": ["report", "--samples", "-1", "--out", "r", *m],
        "report bad data spec": ["report", "--data", "nonsense", "--out", "r", *m],
        "report unknown data task": ["report", "--data", "zz=in", "--out", "r", *m],
        "report baseline missing": ["report", "--baseline", "nowhere", "--out", "r", *m],
        "eval unknown task": ["eval", "--task", "zz", *m],
        "eval bad metric": ["eval", "--metrics", "bogus", *m],
        "eval empty metrics": ["eval", "--metrics", ",", *m],
        "eval bad images": ["eval", "--images", "-1", *m],
        "eval huge images": ["eval", "--images", str(10**30), *m],
        "eval bad matrix metric": ["eval", "--matrix-metric", "bogus", *m],
        "eval bad protocol": ["eval", "--protocol", "x", *m],
        "eval data spec": ["eval", "--data", "a", *m],
        "eval data missing": ["eval", "--data", "a=nowhere", *m],
        "eval data wrong": ["eval", "--data", "a=in", *m],
        "eval baseline missing": ["eval", "--baseline", "nowhere", *m],
        "eval baseline self": ["eval", "--baseline", "{M}", *m],
        "eval fid weights missing": ["eval", "--metrics", "fid", "--fid-weights", "nowhere", *m],
        "verify extra arg": ["verify", "x", *m],
        "gc extra arg": ["gc", "--bogus", *m],
        "recover healthy": ["recover", *m],
        "tasks bogus flag": ["tasks", "--bogus", *m],
        "unknown command": ["bogus"],
        "data download unknown": ["data", "download", "bogus"],
        "data no args": ["data"],
        "import missing file": ["import", "--task", "x", "--data", FACADES, "nowhere.pth", "--model-dir", "new"],
        "import text": ["import", "--task", "x", "--data", FACADES, "text.pth", "--model-dir", "new"],
        "import empty": ["import", "--task", "x", "--data", FACADES, "empty.pth", "--model-dir", "new"],
        "import random": ["import", "--task", "x", "--data", FACADES, "random.pth", "--model-dir", "new"],
        "import not weights": ["import", "--task", "x", "--data", FACADES, "plain.pth", "--model-dir", "new"],
        "import safetensors wrong": ["import", "--task", "x", "--data", FACADES, "wrong.safetensors",
                                     "--model-dir", "new"],
        "import evil .pth": ["import", "--task", "x", "--data", FACADES, "evil.pth", "--model-dir", "new"],
        "import evil .pkl": ["import", "--task", "x", "--data", FACADES, "evil.pkl", "--model-dir", "new"],
        "import evil into model": ["import", "--task", "x", "--data", FACADES, "evil.pth", *m],
        "import folder": ["import", "--task", "x", "--data", FACADES, "in", "--model-dir", "new"],
        "import bad arch": ["import", "--arch", "bogus", "--task", "x", "--data", FACADES, "evil.pth",
                            "--model-dir", "new"],
        "run missing": ["run", "nowhere.toml"],
        "run folder": ["run", "folder.toml"],
    }
    for name in ("syntax", "unknown-key", "unknown-option", "wrong-type", "wrong-type-task", "nan", "no-name",
                 "no-tasks", "empty", "dup-task", "methods", "seeds", "missing-data", "binary"):
        commands[f"run {name}"] = ["run", f"{name}.toml"]

    def setup(folder: Path) -> None:
        evil_pickle(folder)
        toml_files(folder)
    for name, argv in commands.items():
        cases.append(Case("commands", name, argv, setup=setup, after=no_marker,
                          must_fail=not name.startswith(("recover", "eval baseline self", "data no args",
                                                         "generate aligned 1x1"))))
    return cases


# --- damaged model directories -------------------------------------------------------------

def edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(model: Path) -> None:
        manifest = json.loads((model / "manifest.json").read_text())
        change(manifest)
        (model / "manifest.json").write_text(json.dumps(manifest))
    return setup


def damage_file(kind: str, which: str) -> Callable[[Path], None]:
    def setup(model: Path) -> None:
        files = sorted((model / which).glob("*.safetensors"))
        if kind == "truncated":
            files[0].write_bytes(files[0].read_bytes()[:100])
        elif kind == "zeroed":
            files[0].write_bytes(bytes(files[0].stat().st_size))
        elif kind == "swapped":
            first, second = files[0].read_bytes(), files[1].read_bytes()
            files[0].write_bytes(second)
            files[1].write_bytes(first)
        elif kind == "missing":
            files[-1].unlink()
    return setup


def symlinked(which: str) -> Callable[[Path], None]:
    def setup(model: Path) -> None:
        elsewhere = model.parent / f"elsewhere-{which}"
        shutil.move(model / which, elsewhere)
        (model / which).symlink_to(elsewhere)
    return setup


def junk(model: Path) -> None:
    (model / "tasks" / "0003-junk.safetensors").write_bytes(os.urandom(500))
    (model / "bank" / ".0003-x.safetensors.123.tmp").write_bytes(b"half")
    (model / "probes" / "notes.txt").write_text("x")
    (model / "junk").mkdir()
    (model / "junk" / "f").write_text("x")


def pop_field(key: str):
    return lambda m: m["tasks"][0].pop(key)


def set_field(key: str, value):
    return lambda m: m["tasks"][0].__setitem__(key, value)


DAMAGES: dict[str, Callable[[Path], None]] = {
    **{f"{which} {kind}": damage_file(kind, which) for which in ("tasks", "bank", "probes")
       for kind in ("truncated", "zeroed", "swapped", "missing")},
    "manifest not JSON": lambda model: (model / "manifest.json").write_text("{not json"),
    "manifest empty": lambda model: (model / "manifest.json").write_bytes(b""),
    "manifest a list": lambda model: (model / "manifest.json").write_text("[]"),
    "manifest tasks a string": edit_manifest(lambda m: m.__setitem__("tasks", "x")),
    "manifest task a number": edit_manifest(lambda m: m["tasks"].__setitem__(0, 3)),
    "manifest without tasks": edit_manifest(lambda m: m.pop("tasks")),
    "manifest entry without sha256": edit_manifest(pop_field("sha256")),
    "manifest entry without file": edit_manifest(pop_field("file")),
    "manifest entry without name": edit_manifest(pop_field("name")),
    "manifest entry without options": edit_manifest(pop_field("options")),
    "manifest index a string": edit_manifest(set_field("index", "one")),
    "manifest params negative": edit_manifest(set_field("params", -5)),
    "manifest names missing file": edit_manifest(set_field("file", "tasks/0009-gone.safetensors")),
    "manifest file outside": edit_manifest(set_field("file", "../../etc/passwd")),
    "manifest edited options": edit_manifest(lambda m: m["tasks"][0]["options"].__setitem__("ngf", 16)),
    "manifest option wrong type": edit_manifest(lambda m: m["tasks"][0]["options"].__setitem__("ngf", "eight")),
    "manifest edited direction": edit_manifest(set_field("direction", "AtoB")),
    "manifest direction bogus": edit_manifest(set_field("direction", "sideways")),
    "manifest duplicate task": edit_manifest(lambda m: m["tasks"].append(dict(m["tasks"][0]))),
    "manifest stages broken": edit_manifest(lambda m: m.__setitem__("stages", [{"after": 3}])),
    "manifest missing": lambda model: (model / "manifest.json").unlink(),
    "tasks/ symlinked": symlinked("tasks"),
    "bank/ symlinked": symlinked("bank"),
    "extra junk files": junk,
}


def damage_cases() -> list[Case]:
    commands = {
        "verify": ["verify", "--model-dir", "{M}"],
        "generate": ["generate", "--task", "a", "in", "out", "--model-dir", "{M}"],
        "eval": ["eval", "--model-dir", "{M}"],
        "tasks": ["tasks", "--model-dir", "{M}"],
        "train": train_argv("c", FACADES),
        "gc": ["gc", "--model-dir", "{M}"],
        "recover": ["recover", "--model-dir", "{M}"],
    }
    cases = []
    for damage, apply in DAMAGES.items():
        for command, argv in commands.items():
            def setup(folder: Path, apply=apply) -> None:
                make_inputs(folder)
                apply(folder / "model")
            cases.append(Case("damaged model", f"{damage}: {command}", argv, setup=setup))
    cases.append(Case("damaged model", "manifest missing: recover then verify", ["recover", "--model-dir", "{M}"],
                      setup=lambda f: DAMAGES["manifest missing"](f / "model"), after=recovered))
    return cases


def recovered(case: Case, folder: Path, result: Result) -> list[str]:
    if result.code != 0:
        return [f"recover failed: {result.err.strip()[:200]}"]
    check = run_now(["verify", "--model-dir", folder / "model"], folder, tag="verify")
    return [] if check.code == 0 else [f"verify after recover: {(check.out + check.err).strip()[:200]}"]


# --- faults at every write point -----------------------------------------------------------

class Points:
    """Records the write points; the child writes them to POINTS on exit."""

    def __init__(self, record: Path):
        self.record, self.seen = record, []

    def __call__(self, stage: str, path: Path) -> None:
        self.seen.append(stage)
        self.record.write_text(json.dumps(self.seen))


FAULTED_COMMANDS = {
    "train": (train_argv("c", FACADES, "{M}", "--checkpoint-every", "1"), None),
    "import": (["import", "--arch", "pix2pix", "--task", "x", "--data", FACADES, "--direction", "BtoA",
                "--eval-images", "2", "ref.pth", "--model-dir", "{M}"], "reference"),
    "eval": (["eval", "--model-dir", "{M}"], "stage-missing"),
    "gc": (["gc", "--model-dir", "{M}"], "leftovers"),
    "recover": (["recover", "--model-dir", "{M}"], "no-manifest"),
}


def prepare_fault(kind: str | None) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        model = folder / "model"
        if kind == "reference":
            from pbgan_plugins.networks import UnetGenerator, get_norm_layer
            shutil.rmtree(model)
            net = UnetGenerator(3, 3, 5, ngf=8, norm_layer=get_norm_layer("batch"), use_dropout=True)
            torch.save(net.state_dict(), folder / "ref.pth")
        elif kind == "stage-missing":
            edit_manifest(lambda m: m.__setitem__("stages", m["stages"][:-1]))(model)
        elif kind == "leftovers":
            junk(model)
            (model / "checkpoints" / "zz").mkdir(parents=True)
            (model / "checkpoints" / "zz" / "checkpoint.safetensors").write_bytes(b"x")
        elif kind == "no-manifest":
            (model / "manifest.json").unlink()
    return setup


def fault_cases(work: Path, base: Path) -> list[Case]:
    cases = []
    for command, (argv, kind) in FAULTED_COMMANDS.items():
        folder = work / f"points-{command}"
        folder.mkdir()
        shutil.copytree(base, folder / "model")
        prepare_fault(kind)(folder)
        record = folder / "POINTS"
        result = run_now([str(a).replace("{M}", str(folder / "model")) for a in argv], folder, Points(record))
        if result.code != 0:
            cases.append(Case("faults", f"{command}: clean run", argv, setup=prepare_fault(kind)))
            continue
        points = json.loads(record.read_text()) if record.exists() else []
        for at, stage in enumerate(points):
            for fault in FAULT_KINDS:
                if fault == "disk-full" and stage != "write":
                    continue
                cases.append(Case("faults", f"{command}: {fault} at write point {at} ({stage})", argv,
                                  setup=prepare_fault(kind), hook=Fault(fault, at), after=completes))
    return cases


def stored_names(model: Path) -> set[str]:
    try:
        return {entry["name"] for entry in json.loads((model / "manifest.json").read_text())["tasks"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def completes(case: Case, folder: Path, result: Result) -> list[str]:
    """After a fault: verify passes (or the manifest is still missing and recover is named), and the
    same command, with --resume where a checkpoint was kept, completes."""
    model = folder / "model"
    problems = []
    if result.code == KILLED and case.hook.kind == "kill":
        result = Result(1, "", "error: killed\n")
    if (model / "manifest.json").exists():
        check = run_now(["verify", "--model-dir", model], folder, tag="verify")
        if check.code != 0:
            problems.append(f"verify after the fault: {(check.out + check.err).strip()[:300]}")
    if result.code == 0:
        return problems  # the fault did not stop it (a warning said what was left out)
    argv = [str(a).replace("{M}", str(model)) for a in case.argv]
    new_task = {"train": "c", "import": "x"}.get(case.argv[0])
    if new_task and new_task in stored_names(model):  # stored; only its metrics row may be missing
        argv = ["eval", "--model-dir", model]
    elif case.argv[0] == "train" and (model / "checkpoints" / "c" / "checkpoint.safetensors").exists() \
            or "--resume" in result.err:
        argv.append("--resume")
    again = run_now(argv, folder, tag="again")
    if again.code != 0:
        problems.append(f"rerun failed: {' '.join(argv[:1] + argv[-1:])}: {(again.out + again.err).strip()[:300]}")
    else:
        check = run_now(["verify", "--model-dir", model], folder, tag="verify2")
        if check.code != 0:
            problems.append(f"verify after the rerun: {(check.out + check.err).strip()[:300]}")
    return problems


# --- the pool ------------------------------------------------------------------------------

def start(case: Case, index: int, work: Path, base: Path):
    folder = work / f"case-{index:04d}"
    folder.mkdir()
    if case.model:
        shutil.copytree(base, folder / "model", symlinks=True)
    if case.setup is not None:
        case.setup(folder)
    before = model_files(base) if case.model else {}
    intact = {rel: data for rel, data in before.items()
              if (folder / "model" / rel).is_file() and not (folder / "model" / rel).is_symlink()
              and (folder / "model" / rel).read_bytes() == data}
    argv = [str(a).replace("{M}", str(folder / "model")) for a in case.argv]
    pid, out, err = spawn(argv, folder, case.hook)
    return pid, out, err, time.monotonic(), folder, intact


def finish(case: Case, folder: Path, intact: dict, result: Result) -> None:
    case.result = result
    if case.hook is not None and isinstance(case.hook, Fault):
        if case.hook.kind == "kill" and result.code == KILLED:
            pass
        elif case.hook.kind == "ctrl-c" and result.code == 0:
            case.problems.append("Ctrl-C ignored")  # the command finished through an interrupt
        else:
            case.problems += output_problems(result)
    else:
        case.problems += output_problems(result, case.must_fail)
    if case.after is not None:
        case.problems += case.after(case, folder, result)
    gone = lost(intact, folder / "model")  # after the command and any rerun
    if gone:
        case.problems.append("data loss: " + ", ".join(gone))


def run_all(cases: list[Case], work: Path, base: Path, workers: int) -> None:
    queue = list(enumerate(cases))
    running = {}
    while queue or running:
        while queue and len(running) < workers:
            index, case = queue.pop(0)
            pid, out, err, started, folder, intact = start(case, index, work, base)
            running[pid] = (case, out, err, started, folder, intact)
        for pid, (case, out, err, started, folder, intact) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            timed_out = not done and time.monotonic() - started > TIMEOUT_S
            if not done and not timed_out:
                continue
            if timed_out:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code = -999
            else:
                code = os.waitstatus_to_exitcode(status)
            del running[pid]
            result = Result(code, out.read_text(errors="replace"), err.read_text(errors="replace"))
            finish(case, folder, intact, result)
            if not case.problems:
                shutil.rmtree(folder, ignore_errors=True)
        time.sleep(0.05)


def report(cases: list[Case], seconds: float, verbose: bool = False) -> int:
    categories = list(dict.fromkeys(case.category for case in cases))
    print(f"\n{'category':<16}{'tried':>7}{'passed':>8}{'accepted':>10}{'internal/tb':>13}{'data loss':>11}"
          f"{'other':>7}")
    totals = [0] * 6
    for category in categories:
        group = [c for c in cases if c.category == category]
        internal = sum(any(p in ("traceback", "internal error") or p.startswith("crashed") for p in c.problems)
                       for c in group)
        loss = sum(any(p.startswith("data loss") or "MARKER" in p for p in c.problems) for c in group)
        failed = sum(bool(c.problems) for c in group)
        accepted = sum(c.result is not None and c.result.code == 0 for c in group)
        row = [len(group), len(group) - failed, accepted, internal, loss, failed - max(internal, loss)]
        totals = [a + b for a, b in zip(totals, row)]
        print(f"{category:<16}{row[0]:>7}{row[1]:>8}{row[2]:>10}{row[3]:>13}{row[4]:>11}{row[5]:>7}")
    print(f"{'all':<16}{totals[0]:>7}{totals[1]:>8}{totals[2]:>10}{totals[3]:>13}{totals[4]:>11}{totals[5]:>7}")
    print(f"({seconds / 60:.1f} min)")
    if verbose:
        print("\naccepted (exit 0): " + "; ".join(f"{c.category}: {c.name}" for c in cases
                                              if c.result is not None and c.result.code == 0 and not c.problems))
    failing = [c for c in cases if c.problems]
    for case in failing:
        text = ((case.result.err or case.result.out) if case.result else "").strip().splitlines()
        print(f"\nFAIL [{case.category}] {case.name}: {'; '.join(case.problems)}")
        print("  $ pbgan " + " ".join(str(a) for a in case.argv))
        for line in text[-4:]:
            print("  | " + line[:200])
    return 1 if failing else 0


def main_sweep() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="inputs,data,commands,damage,faults")
    parser.add_argument("--match", default="", help="only cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--verbose", action="store_true", help="also list the cases that exited 0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pbgan-sweep-"))
    try:
        base = build_model(work)
        only = set(args.only.split(","))
        cases = [*(input_cases() if "inputs" in only else []), *(data_cases() if "data" in only else []),
                 *(command_cases() if "commands" in only else []), *(damage_cases() if "damage" in only else []),
                 *(fault_cases(work, base) if "faults" in only else [])]
        cases = [c for c in cases if args.match in c.name]
        print(f"{len(cases)} cases, model {base}", flush=True)
        run_all(cases, work, base, args.workers)
        return report(cases, time.monotonic() - started, args.verbose)
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main_sweep())
