"""The options of `pbgan train` in words, grouped by the plugin that adds them: the text of
`pbgan train --help`, the rows of `pbgan list-plugins --json` and the docstring of `pbgan.train`."""
from __future__ import annotations

import keyword
import textwrap
from typing import Any

from .options import Option
from .plugins import Plugins


def type_name(option: Option) -> str:
    kind = option.type or type(option.default)
    return {bool: "bool", int: "int", float: "float"}.get(kind, "str")


def describe(option: Option) -> dict[str, Any]:
    """One option as JSON: flag as typed, type, default, choices (or None) and help."""
    return {"flag": f"--{option.flag}", "key": option.key, "type": type_name(option), "default": option.default,
            "choices": list(option.choices) if option.choices else None, "help": option.help}


def option_groups(plugins: Plugins) -> list[tuple[str, str, tuple[Option, ...]]]:
    """(group title, owning plugin, options) in the order `train` applies them; dataset options
    that several datasets share are listed once, under the first."""
    from .engine import ENGINE_OPTIONS

    groups = [("every architecture", "pbgan_core", ENGINE_OPTIONS)]
    for kind, title in (("architectures", "--arch"), ("factorizers", "--factorizer"), ("datasets", "--dataset")):
        registry = getattr(plugins, kind)
        for name, item in registry.items.items():
            groups.append((f"{title} {name}", registry.owners[name], tuple(item.options)))
    return groups


def _flag_line(option: Option) -> str:
    kind = type_name(option)
    if kind == "bool":
        flag = f"--{option.flag}" if option.flag.startswith("no-") else f"--{option.flag} / --no-{option.flag}"
        default = "on" if option.default else "off"
    else:
        metavar = "|".join(option.choices) if option.choices else kind.upper()
        flag, default = f"--{option.flag} {metavar}", option.default
    return f"{flag}  [default: {default}]"


def options_text(plugins: Plugins, width: int = 78) -> str:
    """The plugins' options for `pbgan train --help`, one paragraph per group. Each paragraph
    starts with click's no-rewrap marker so the layout survives."""
    paragraphs, shown = [], set()
    for title, owner, options in option_groups(plugins):
        fresh = [o for o in options if o not in shown]
        repeated = [o for o in options if o in shown]
        lines = [f"{title} (from {owner}):"]
        for option in fresh:
            lines.append("  " + _flag_line(option))
            lines += textwrap.wrap(option.help, width - 8, initial_indent="      ", subsequent_indent="      ")
        if repeated:
            lines += textwrap.wrap("also " + ", ".join(f"--{o.flag}" for o in repeated) + " (as above)", width - 4,
                                   initial_indent="  ", subsequent_indent="  ")
        if len(lines) == 1:
            lines.append("  (no options)")
        shown.update(options)
        paragraphs.append("\b\n" + "\n".join(lines))
    return "\n\n".join(paragraphs)


def options_docstring(plugins: Plugins) -> str:
    """The same groups as reStructuredText-like lines for `help(pbgan.train)`: keyword, type, default."""
    lines, shown = ["Plugin options (keywords with underscores; `lambda_` for --lambda):", ""], set()
    for title, owner, options in option_groups(plugins):
        fresh = [o for o in options if o not in shown]
        shown.update(options)
        if not fresh:
            continue
        lines.append(f"{title} (from {owner}):")
        for option in fresh:
            choices = f", one of {', '.join(map(repr, option.choices))}" if option.choices else ""
            name = option.key + ("_" if keyword.iskeyword(option.key) else "")
            lines.append(f"    {name} ({type_name(option)}, default {option.default!r}{choices})")
            lines += textwrap.wrap(option.help, 84, initial_indent="        ", subsequent_indent="        ")
        lines.append("")
    return "\n".join(lines)
