"""Plugin-declared options: plugins say which `--flags` they accept, the CLI parses them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import UsageError


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
    """One `--flag` a plugin accepts. `flag` is spelled as typed (`lambda-l1`, `netG`)."""

    flag: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    type: type | None = None  # defaults to type(default); needed when default is None

    @property
    def key(self) -> str:
        return self.flag.replace("-", "_")

    def expects(self) -> tuple[str, Callable[[Any], bool]]:
        """(what a value of this option must be, the check), from its type."""
        return VALUE_TYPES.get(self.type or type(self.default), ("any value", lambda v: True))

    def convert(self, raw: str) -> Any:
        kind = self.type or type(self.default)
        if kind is bool:
            lowered = raw.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise UsageError(f"--{self.flag} expects true or false, got {raw!r}")
            value: Any = lowered in ("1", "true", "yes", "on")
        else:
            try:
                value = kind(raw) if kind is not type(None) else raw
            except ValueError:
                raise UsageError(f"--{self.flag} expects {kind.__name__}, got {raw!r}") from None
        if self.choices and value not in self.choices:
            raise UsageError(f"--{self.flag} must be one of {', '.join(self.choices)}, got {raw!r}")
        return value


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
    """Options given as Python keywords (`ngf=8`, `max_images=24`, `lambda_=0.5`): known names and
    choices are checked, strings are converted as on the command line."""
    by_flag = _by_name(options)
    checked: dict[str, Any] = {}
    for name, value in values.items():
        option = by_flag.get(name.lower().rstrip("_"))
        if option is None:
            raise _unknown(name, by_flag, owner)
        if isinstance(value, str) and (option.type or type(option.default)) is not str:
            value = option.convert(value)
        elif not option.expects()[1](value):
            raise UsageError(f"{option.key} expects {option.expects()[0]}, got {value!r}")
        elif option.choices and value not in option.choices:
            raise UsageError(f"{option.key} must be one of {', '.join(option.choices)}, got {value!r}")
        checked[option.key] = value
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
        is_bool = (option.type or type(option.default)) is bool
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
