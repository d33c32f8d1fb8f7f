"""Declared options: which `--flags` a command or plugin accepts, with their types and ranges;
the command line and the Python API check values against the same declaration."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import UsageError

INT64_MAX = 2**63 - 1  # integers end up in torch and JSON: larger ones are refused whatever the range


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# an option's type -> (what its value must be, check); JSON numbers without a fraction are ints
VALUE_TYPES: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("a whole number", _whole),
    float: ("a number", lambda v: _whole(v) or isinstance(v, float)),
    str: ("text", lambda v: isinstance(v, str)),
}


@dataclass(frozen=True)
class Option:
    """One `--flag`. `flag` is spelled as typed (`lambda-l1`, `netG`). Numbers may declare a
    range: `min`/`max` inclusive, `above`/`below` exclusive."""

    flag: str
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    type: type | None = None  # defaults to type(default); needed when default is None
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    @property
    def key(self) -> str:
        return self.flag.replace("-", "_")

    def expects(self) -> tuple[str, Callable[[Any], bool]]:
        """(what a stored value of this option must be, the check), from its type."""
        return VALUE_TYPES.get(self.kind, ("any value", lambda v: True))

    @property
    def kind(self) -> type:
        return self.type or type(self.default)

    def convert(self, raw: str, name: str | None = None) -> Any:
        """A value typed on the command line, parsed and checked; errors name `name` (default: --flag)."""
        name = name or f"--{self.flag}"
        kind = self.kind
        if kind is bool:
            lowered = raw.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise UsageError(f"{name} expects true or false, got {raw!r}")
            return lowered in ("1", "true", "yes", "on")
        try:
            value = kind(raw) if kind is not type(None) else raw
        except ValueError:
            raise UsageError(f"{name} expects {kind.__name__}, got {raw!r}") from None
        return self.check(value, name)

    def check(self, value: Any, name: str | None = None) -> Any:
        """`value` as this option's type (ints as floats where a float is wanted), within its choices
        and range; a one-line error naming `name` (default: --flag) otherwise."""
        name = name or f"--{self.flag}"
        kind = self.kind
        if value is None and self.default is None:
            return None
        if kind is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{name} must be true or false, got {value!r}")
        elif kind is int:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise UsageError(f"{name} must be a whole number, got {value!r}")
            value = int(value)
        elif kind is float:
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise UsageError(f"{name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, got {value}")
        elif kind is str and not isinstance(value, str):
            raise UsageError(f"{name} must be a string, got {value!r}")
        if self.choices and value not in self.choices:
            raise UsageError(f"{name} must be one of {', '.join(self.choices)}, got {value!r}")
        if kind in (int, float) and not self.in_range(value):
            raise UsageError(f"{name} must be {self.range_text()}, got {value}")
        if kind is int and abs(value) > INT64_MAX:
            raise UsageError(f"{name} must be a whole number within +-{INT64_MAX}, got {value}")
        return value

    def in_range(self, value: float) -> bool:
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))

    def range_text(self) -> str:
        """The declared range in words: `in (0, 1]`, `>= 0`, `< 1`."""
        low = f"[{self.min}" if self.min is not None else f"({self.above}" if self.above is not None else ""
        high = f"{self.max}]" if self.max is not None else f"{self.below})" if self.below is not None else ""
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    return {o.key: o.default for o in options}


def _by_name(options: Iterable[Option]) -> dict[str, Option]:
    by_flag = {}
    for o in options:
        by_flag[o.flag.lower()] = o
        by_flag[o.key.lower()] = o
    return by_flag


def _unknown(name: str, by_flag: dict[str, Option], owner: str) -> UsageError:
    known = ", ".join(sorted("--" + o.flag for o in set(by_flag.values())))
    return UsageError(f"unknown option --{name} for {owner}; known options: {known or 'none'}")


def check_options(values: Mapping[str, Any], options: Iterable[Option], owner: str) -> dict[str, Any]:
    """Options given as Python keywords (`ngf=8`, `max_images=24`, `lambda_=0.5`): known names,
    types, choices and ranges are checked; strings are converted as on the command line."""
    by_flag = _by_name(options)
    checked: dict[str, Any] = {}
    for name, value in values.items():
        option = by_flag.get(name.lower().rstrip("_"))
        if option is None:
            raise _unknown(name, by_flag, owner)
        if isinstance(value, str) and option.kind is not str:
            checked[option.key] = option.convert(value, option.key)
        else:
            checked[option.key] = option.check(value, option.key)
    return checked


def parse_extra_args(args: Sequence[str], options: Iterable[Option], owner: str) -> dict[str, Any]:
    """Parse `--flag value`, `--flag=value` and bare boolean `--flag` / `--no-flag`."""
    by_flag = _by_name(options)
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}; see `pbgan train --help`")
        name, _, inline = arg[2:].partition("=")
        negated = name.lower().startswith("no-") and name.lower()[3:] in by_flag
        option = by_flag.get(name.lower()[3:] if negated else name.lower())
        if option is None:
            raise _unknown(name, by_flag, owner)
        is_bool = option.kind is bool
        if negated:
            values[option.key] = False
        elif inline:
            values[option.key] = option.convert(inline)
        elif is_bool and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            values[option.key] = True
        else:
            if i + 1 >= len(args):
                raise UsageError(f"--{option.flag} needs a value")
            i += 1
            values[option.key] = option.convert(args[i])
        i += 1
    return values
