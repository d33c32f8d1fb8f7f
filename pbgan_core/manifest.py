"""The manifest's schema, checked whenever a manifest is read: a damaged or hand-edited file is
named with the field at fault instead of failing later somewhere deep inside pbgan."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from . import __version__
from .errors import PbganError
from .options import Option

FORMAT = 5  # 2: task entries record their format and --coef-scale; 3: --budget; 4: --bank-limit;
# 5: --bank-segments, --unit-rows (store.OPTIONS_ADDED)
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
    "probe_file": ("a path", _text),
    "probe_file_sha256": ("a sha256 hex digest", _hex),
    "entry_sha256": ("a sha256 hex digest", _hex),
    "metrics": ("an object of metric values", _metrics),
    "train": ("an object", lambda v: isinstance(v, dict)),
    "format": ("a whole number", _whole),
    "metrics_protocol": ("a test-time protocol name", _text),
}
# options every task records, whatever its plugins (only `size` is in every format)
CORE_OPTIONS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "size": ("a whole number", _whole),
    "batch_size": ("a whole number", _whole),
    "seed": ("a whole number", _whole),
    "direction": ("AtoB or BtoA", lambda v: v in DIRECTIONS),
    "dataset": ("text", _text),
    "eval_images": ("a whole number", _whole),
    "bn_images": ("a whole number", _whole),
    "epochs": ("a whole number", _whole),
    "epochs_decay": ("a whole number", _whole),
    "steps_per_epoch": ("a whole number", _whole),
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
        for key, (kind, ok) in CORE_OPTIONS.items():
            if key in entry["options"] and not ok(entry["options"][key]):
                raise bad(f"{where} option {key!r}", f"must be {kind}, got {json.dumps(entry['options'][key])[:60]}")
        if entry["index"] != i + 1:
            raise bad(f"{where} field 'index'", f"is {entry['index']}, its position says {i + 1}")
        if entry["name"] in names:
            raise bad(where, f"repeats the task name {entry['name']!r}")
        names.add(entry["name"])
        expected = file_name(i + 1, entry["name"])
        for key, folder in (("file", "tasks"), ("bank_file", "bank"), ("probe_file", "probes")):
            if key in entry and entry[key] != f"{folder}/{expected}":
                raise bad(f"{where} field {key!r}", f"is {entry[key]!r}, expected '{folder}/{expected}'")
        if ("probe_file" in entry) != ("probe_file_sha256" in entry):
            raise bad(where, "must have both 'probe_file' and 'probe_file_sha256' or neither")
    stages = manifest.get("stages", [])
    if not isinstance(stages, list):
        raise bad("field 'stages'", "must be a list")
    for i, stage in enumerate(stages):
        if not (isinstance(stage, dict) and _text(stage.get("after")) and isinstance(stage.get("metrics"), dict)
                and all(isinstance(k, str) and _metrics(v) for k, v in stage["metrics"].items())):
            raise bad(f"stages[{i}]", "must be an object with 'after' (a task name) and 'metrics' (per task)",
                      "delete the field 'stages' and run `pbgan eval` to record it again")
    return manifest


# --- a task entry's protection against edits ---------------------------------------------------
# A task entry is written once, at the commit; only its metrics row may be recorded again later
# (`pbgan eval`). Every other field is covered by the entry's hash, `entry_sha256`.
CHANGES_AFTER_COMMIT = ("metrics", "metrics_protocol")
# The copy of the entry in its probe file (the commit record) holds every field known when that
# file is written except `train`, whose timings would make identical trainings write different files.
NOT_IN_RECORD = ("train", "probe_file", "probe_file_sha256", "entry_sha256")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_sha256(entry: dict[str, Any]) -> str:
    protected = {k: v for k, v in entry.items() if k not in (*CHANGES_AFTER_COMMIT, "entry_sha256")}
    return hashlib.sha256(_canonical(protected).encode()).hexdigest()


def entry_record(entry: dict[str, Any]) -> str:
    """The entry as its commit record keeps it (JSON)."""
    return _canonical({k: v for k, v in entry.items() if k not in (*CHANGES_AFTER_COMMIT, *NOT_IN_RECORD)})


ABSENT = "(absent)"  # how a field missing on one side shows


def _shown(value: Any) -> str:
    text = value if value is ABSENT else _canonical(value)
    return text if len(text) <= 40 else text[:36] + "..."


def edited_fields(entry: dict[str, Any], record: str) -> list[tuple[str, str, str]]:
    """(field, value recorded at the commit, value now) for each field of `entry` that differs from
    its commit record; fields of an object field are named inside it (`options.budget`)."""
    then = json.loads(record)
    now = {k: v for k, v in entry.items() if k not in (*CHANGES_AFTER_COMMIT, *NOT_IN_RECORD)}
    pairs = []
    for key in sorted(set(then) | set(now)):
        a, b = then.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            pairs += [(f"{key}.{k}", a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))]
        else:
            pairs.append((key, then.get(key, ABSENT), now.get(key, ABSENT)))
    return [(name, _shown(a), _shown(b)) for name, a, b in pairs if _canonical(a) != _canonical(b)]


def check_entry_unedited(entry: dict[str, Any], path: Path) -> None:
    """Refuse a task whose entry was edited after its commit (cheap: no file is read)."""
    if "entry_sha256" in entry and entry["entry_sha256"] != entry_sha256(entry):
        raise PbganError(f"{path}: the entry of task {entry['name']!r} was edited after the task was stored (its "
                         "entry_sha256 does not match); restore manifest.json from a backup (`pbgan verify` "
                         "names the field)")


# --- what a task entry needs from the installed plugins ----------------------------------------
def check_entry_plugins(entry: dict[str, Any], plugins: Any, path: Path) -> None:
    """The architecture and factorizer a stored task needs are installed, and its options have the
    types the plugins declare them with (dataset options too, where that plugin is installed).
    Choices are not checked: they may change between versions, and a stored task keeps its value."""
    where = f"{path}: task {entry['name']!r}"
    owners: list[tuple[str, Iterable[Option]]] = []
    for kind, key in (("architectures", "arch"), ("factorizers", "factorizer"), ("datasets", "dataset")):
        registry = getattr(plugins, kind)
        if entry[key] in registry:
            owners.append((f"{kind[:-1]} {entry[key]}", registry.get(entry[key]).options))
        elif key != "dataset":
            raise PbganError(f"{where} needs the {kind[:-1]} {entry[key]!r}, which no installed plugin provides; "
                             f"install the plugin that provides it (installed: {', '.join(registry.names()) or 'none'}"
                             "; see `pbgan list-plugins`)")
    for owner, options in owners:
        for option in options:
            kind, ok = option.expects()
            if option.key in entry["options"] and not ok(entry["options"][option.key]):
                raise PbganError(f"{where} option {option.key!r} (--{option.flag} of the {owner}) must be {kind}, "
                                 f"got {json.dumps(entry['options'][option.key])[:60]}; restore manifest.json from "
                                 "a backup")
