"""Plugin loading: entry points, name clashes, and plugins that fail to import."""
import types
from importlib import metadata

import pytest

from pbgan_core import plugins as plugin_module
from pbgan_core.hookspecs import hookimpl
from pbgan_core.interfaces import Metric
from pbgan_core.plugins import NameClash, PluginWarning, build_plugins


def test_builtin_plugins_come_from_entry_points():
    names = {ep.name for ep in metadata.entry_points(group="pbgan")}
    assert {"pix2pix", "piggyback", "datasets", "losses", "metrics"} <= names
    plugins = build_plugins()
    assert plugins.architectures.owners["pix2pix"] == "pix2pix"
    assert plugins.factorizers.owners["piggyback"] == "piggyback"


def test_a_clashing_name_names_both_plugins():
    clash = types.SimpleNamespace()

    @hookimpl
    def register_metrics(register):
        register(Metric("psnr", lambda a, b: a, True))

    clash.register_metrics = register_metrics
    with pytest.raises(NameClash, match=r"'metrics'.*'copycat'|'copycat'.*'metrics'"):
        build_plugins(extra={"copycat": clash})


@pytest.mark.parametrize("source, message", [(None, "No module named"), ("raise RuntimeError('boom at import')\n",
                                                                        "boom at import")])
def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning(monkeypatch, tmp_path, source, message):
    if source is not None:
        (tmp_path / "pbgan_exploding_plugin.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
    real = metadata.entry_points

    def entry_points(group):
        broken = metadata.EntryPoint(name="broken", value="pbgan_exploding_plugin", group="pbgan")
        return [*real(group=group), broken]

    monkeypatch.setattr(plugin_module.metadata, "entry_points", entry_points)
    with pytest.warns(PluginWarning, match=f"'broken'.*{message}"):
        plugins = build_plugins()
    assert "pix2pix" in plugins.architectures and "broken" not in plugins.info
