"""Hook specifications: one hook per kind of thing a plugin can provide.

Each hook is handed a `register` callback, so the core owns every registry,
sees every name and can report a clash naming both plugins.
"""
import pluggy

hookspec = pluggy.HookspecMarker("pbgan")
hookimpl = pluggy.HookimplMarker("pbgan")


@hookspec
def register_architectures(register):
    """Register `pbgan_core.interfaces.Architecture` instances."""


@hookspec
def register_datasets(register):
    """Register `pbgan_core.interfaces.DatasetPlugin` instances."""


@hookspec
def register_losses(register):
    """Register `pbgan_core.interfaces.Loss` instances."""


@hookspec
def register_factorizers(register):
    """Register `pbgan_core.factorizer.Factorizer` instances."""


@hookspec
def register_metrics(register):
    """Register `pbgan_core.interfaces.Metric` instances."""


@hookspec
def register_generators(register):
    """Register `pbgan_core.interfaces.GeneratorFamily` instances."""


@hookspec
def register_loggers(register):
    """Register `pbgan_core.interfaces.Logger` instances (`pbgan train --logger NAME`)."""


@hookspec
def register_commands(cli):
    """Add commands to the Typer app `cli`."""


@hookspec(firstresult=True)
def default_data(task):
    """Where the data of a well-known task lives, and its usual direction.

    Return ``(path, direction)`` or None; the first plugin that knows the name wins.
    """
