"""Every option of `pbgan train` is explained: in --help, in list-plugins --json and in help(pbgan.train)."""
import json
import pydoc

import pbgan
from pbgan_core.optiondocs import option_groups
from pbgan_core.plugins import get_plugins


def test_every_option_has_help_text():
    for title, _, options in option_groups(get_plugins()):
        for option in options:
            assert len(option.help) > 12, f"{title}: --{option.flag}"


def test_train_help_shows_type_default_choices_and_help_by_plugin(cli):
    _, out, _ = cli("train", "--help")
    piggyback = out[out.index("--factorizer piggyback (from piggyback):"):]
    assert "--coef-scale FLOAT  [default: 100.0]" in piggyback
    assert "multiplied back" in piggyback
    assert "--allocation small-free|uniform  [default: small-free]" in piggyback
    assert "--free-last / --no-free-last  [default: on]" in piggyback
    assert "--budget FLOAT  [default: 0.3]" in piggyback
    core = out[out.index("every architecture (from pbgan_core):"):]
    assert "--init auto|warm|scratch  [default: auto]" in core and "--bn-images INT  [default: 400]" in core
    assert "--arch pix2pix (from pix2pix):" in out and "--ngf INT  [default: 64]" in out


def test_list_plugins_json_describes_options(cli):
    _, out, _ = cli("list-plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    options = {o["flag"]: o for o in rows["piggyback"]["options"]["--factorizer piggyback"]}
    assert options["--coef-scale"]["type"] == "float" and options["--coef-scale"]["default"] == 100.0
    assert options["--allocation"]["choices"] == ["small-free", "uniform"]
    assert "budget" in options["--allocation"]["help"]
    netd = next(o for o in rows["pix2pix"]["options"]["--arch pix2pix"] if o["flag"] == "--netD")
    assert netd["choices"] == ["basic", "n_layers", "pixel"] and netd["default"] == "basic"
    assert rows["verify"]["options"] == {}
    init = next(o for o in rows["pbgan_core"]["options"]["every architecture"] if o["flag"] == "--init")
    assert init["choices"] == ["auto", "warm", "scratch"] and "warm" in init["help"]


def test_help_of_the_python_train_lists_the_options():
    text = pydoc.render_doc(pbgan.train, renderer=pydoc.plaintext)
    assert "coef_scale (float, default 100.0)" in text
    assert "lambda_ (float, default 0.25)" in text
    assert "allocation (str, default 'small-free', one of 'small-free', 'uniform')" in text
    assert "max_images (int, default 0)" in text
