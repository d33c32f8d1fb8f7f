"""The manifest's schema, checked whenever a manifest is read: a damaged or hand-edited file is
named with the field at fault instead of failing later somewhere deep inside pbgan."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import PbganError

FORMAT = 4  # 2: task entries record their format and --coef-scale; 3: --budget; 4: --bank-limit (store.OPTIONS_ADDED)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIRECTIONS = ("AtoB", "BtoA")


def check_task_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise PbganError(f"task name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                         "(at most 64, starting with a letter or digit)")
    return name


def empty_manifest() -> dict[str, Any]:
    return {"format": FORMAT, "pbgan": __version__, "tasks": []}


def file_name(index: int, name: str) -> str:
    return f"{index:04d}-{name}.safetensors"


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _hex(v: Any) -> bool:
    return isinstance(v, str) and bool(HEX64.match(v))


def _metrics(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and (_number(x) or x is None) for k, x in v.items())


# field -> (what it must be, check); every task entry has these
TASK_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "name": ("a task name (letters, digits, '.', '_', '-')", lambda v: _text(v) and bool(NAME_PATTERN.match(v))),
    "index": ("a whole number", _whole),
    "arch": ("text", _text),
    "factorizer": ("text", _text),
    "dataset": ("text", _text),
    "data": ("text", _text),
    "direction": ("AtoB or BtoA", lambda v: v in DIRECTIONS),
    "options": ("an object with a whole-number size", lambda v: isinstance(v, dict) and _whole(v.get("size"))),
    "signature": ("an object", lambda v: isinstance(v, dict)),
    "params": ("an object with whole-number stored and standalone counts",
               lambda v: isinstance(v, dict) and _whole(v.get("stored")) and _whole(v.get("standalone"))
               and v["standalone"] > 0),
    "file": ("a path", _text),
    "sha256": ("a sha256 hex digest", _hex),
    "bank_file": ("a path", _text),
    "bank_sha256": ("a sha256 hex digest", _hex),
    "bank_fingerprint": ("a sha256 hex digest", _hex),
}
OPTIONAL_TASK_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "probe_sha256": ("a sha256 hex digest", _hex),
    "metrics": ("an object of metric values", _metrics),
    "train": ("an object", lambda v: isinstance(v, dict)),
    "format": ("a whole number", _whole),
    "metrics_protocol": ("a test-time protocol name", _text),
}


def validate(manifest: Any, path: Path) -> dict[str, Any]:
    """The manifest if it follows the schema; else a PbganError naming the file and the field."""
    fix = "restore it from a backup (pbgan never writes it like this)"

    def bad(where: str, problem: str, todo: str = fix) -> PbganError:
        return PbganError(f"{path}: {where} {problem}; {todo}")

    if not isinstance(manifest, dict) or not isinstance(manifest.get("tasks"), list):
        raise PbganError(f"{path} is not a pbgan manifest (no list of tasks); point --model-dir at a pbgan model")
    fmt = manifest.get("format")
    if not _whole(fmt) or fmt < 1:
        raise bad("field 'format'", f"must be a whole number such as {FORMAT}, got {json.dumps(fmt)}")
    if fmt > FORMAT:
        raise bad("field 'format'", f"is {fmt}, newer than this pbgan understands ({FORMAT})", "upgrade pbgan")
    names: set[str] = set()
    for i, entry in enumerate(manifest["tasks"]):
        where = f"tasks[{i}]"
        if not isinstance(entry, dict):
            raise bad(where, "must be an object")
        if _text(entry.get("name")):
            where += f" ({entry['name']!r})"
        for key, (kind, ok) in TASK_FIELDS.items():
            if key not in entry:
                raise bad(where, f"has no field {key!r}")
            if not ok(entry[key]):
                raise bad(f"{where} field {key!r}", f"must be {kind}, got {json.dumps(entry[key])[:60]}")
        for key, (kind, ok) in OPTIONAL_TASK_FIELDS.items():
            if key in entry and not ok(entry[key]):
                raise bad(f"{where} field {key!r}", f"must be {kind}, got {json.dumps(entry[key])[:60]}")
        if entry["index"] != i + 1:
            raise bad(f"{where} field 'index'", f"is {entry['index']}, its position says {i + 1}")
        expected = file_name(i + 1, entry["name"])
        for key, folder in (("file", "tasks"), ("bank_file", "bank")):
            if entry[key] != f"{folder}/{expected}":
                raise bad(f"{where} field {key!r}", f"is {entry[key]!r}, expected '{folder}/{expected}'")
        if entry["name"] in names:
            raise bad(where, f"repeats the task name {entry['name']!r}")
        names.add(entry["name"])
    stages = manifest.get("stages", [])
    if not isinstance(stages, list):
        raise bad("field 'stages'", "must be a list")
    for i, stage in enumerate(stages):
        if not (isinstance(stage, dict) and _text(stage.get("after")) and isinstance(stage.get("metrics"), dict)
                and all(isinstance(k, str) and _metrics(v) for k, v in stage["metrics"].items())):
            raise bad(f"stages[{i}]", "must be an object with 'after' (a task name) and 'metrics' (per task)",
                      "delete the field 'stages' and run `pbgan eval` to record it again")
    return manifest
