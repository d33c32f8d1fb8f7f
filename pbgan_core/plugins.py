"""The plugin manager: built-in and third-party plugins load from the `pbgan` entry points."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PbganError, UsageError

GROUP = "pbgan"
KINDS = ("architectures", "datasets", "losses", "factorizers", "metrics", "generators", "loggers")


class PluginWarning(UserWarning):
    """A plugin failed to load; everything else keeps working."""


class NameClash(PbganError):
    pass


@dataclass
class PluginInfo:
    name: str
    version: str | None = None
    distribution: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """Name -> object for one kind, remembering which plugin registered each name."""

    def __init__(self, kind: str):
        self.kind = kind
        self.items: dict[str, Any] = {}
        self.owners: dict[str, str] = {}

    def add(self, obj: Any, plugin: str) -> None:
        name = obj.name
        if name in self.items:
            raise NameClash(
                f"{self.kind[:-1]} {name!r} is registered by both plugin {self.owners[name]!r} "
                f"and plugin {plugin!r}; uninstall one of them"
            )
        self.items[name] = obj
        self.owners[name] = plugin

    def get(self, name: str) -> Any:
        if name not in self.items:
            known = ", ".join(sorted(self.items)) or "none"
            raise UsageError(f"unknown {self.kind[:-1]} {name!r}; known: {known} (see `pbgan list-plugins`)")
        return self.items[name]

    def __contains__(self, name: str) -> bool:
        return name in self.items

    def names(self) -> list[str]:
        return sorted(self.items)


@dataclass
class Plugins:
    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    info: dict[str, PluginInfo]

    def __getattr__(self, kind: str) -> Registry:
        registries = self.__dict__.get("registries", {})
        if kind in registries:
            return registries[kind]
        raise AttributeError(kind)


def _load_entry_points(pm: pluggy.PluginManager, info: dict[str, PluginInfo]) -> None:
    for ep in metadata.entry_points(group=GROUP):
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            warnings.warn(f"plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                          f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
            continue
        pm.register(module, name=ep.name)
        dist = ep.dist
        info[ep.name] = PluginInfo(ep.name, dist.version if dist else None, dist.name if dist else None)


def build_plugins(extra: dict[str, Any] | None = None) -> Plugins:
    """Load every installed plugin and fill one registry per kind.

    `extra` registers more plugin objects by name (tests use it for in-process plugins).
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    info: dict[str, PluginInfo] = {}
    _load_entry_points(pm, info)
    for name, module in (extra or {}).items():
        pm.register(module, name=name)
        info[name] = PluginInfo(name)
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind, registry in registries.items():
        hook = getattr(pm.hook, f"register_{kind}")
        for impl in reversed(hook.get_hookimpls()):  # registration order
            def register(obj: Any, _plugin: str = impl.plugin_name, _reg: Registry = registry) -> None:
                _reg.add(obj, _plugin)
                info[_plugin].provides.setdefault(_reg.kind, []).append(obj.name)

            try:
                impl.function(register=register)
            except NameClash:
                raise
            except Exception as exc:
                warnings.warn(f"plugin {impl.plugin_name!r} failed in register_{kind} and was skipped: "
                              f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
    return Plugins(pm, registries, info)


@lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    return build_plugins()
